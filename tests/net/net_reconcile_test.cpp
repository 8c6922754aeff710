// Startup sweep of host networking after a crash (label `net`, needs root): SnapshotManager's reconciliation
// removes the egress and published-port rules, network namespaces, veths and TAPs of the VMs its store knows
// (the previous process's), and leaves those of VMs it does not know (another fcwarm process's) alone.
//
// Safety: like net_host_test, main() moves the process into a network namespace of its own first, so the
// rules, TAPs and veths are that namespace's, never the machine's. Named network namespaces (/run/netns) are
// shared with the machine: their names carry this process's pid and the test deletes every one it made.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "backends/host_leftovers.hpp"
#include "fcwarm/fcwarm.hpp"
#include "net/egress.hpp"
#include "net/ip.hpp"
#include "net/iptables.hpp"
#include "net/netns.hpp"
#include "net/ports.hpp"
#include "store/images.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "support/test_env.hpp"
#include "util/process.hpp"
#include "util/scope_guard.hpp"

using namespace fcwarm;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

void Ip(const std::vector<std::string>& args) {
  auto st = net::RunIp("ip", args, 10s);
  REQUIRE_MESSAGE(st.ok(), st.ToString());
}

// Leaves `vm_id`'s rules behind as a crashed process would: tagged, without a handle that could remove them.
void LeaveRules(const std::string& vm_id, const std::string& dev, const std::string& guest_ip, bool egress,
                bool ports) {
  const net::IptablesOptions opts;
  if (egress) {
    net::EgressRequest req;
    req.vm_id = vm_id;
    req.host_veth = dev;
    req.guest_ip = guest_ip;
    req.policy.mode = net::EgressPolicy::Mode::kNone;
    req.dns_servers = {"192.0.2.53"};
    auto rules = net::BuildEgressRules(req, opts);
    REQUIRE_MESSAGE(rules.ok(), rules.status().ToString());
    auto tag = net::ReplaceTaggedRules(opts, net::RuleTag(opts, vm_id, net::RuleKind::kEgress), *rules);
    REQUIRE_MESSAGE(tag.ok(), tag.status().ToString());
  }
  if (ports) {
    net::PublishRequest req;
    req.vm_id = vm_id;
    req.host_veth = dev;
    req.guest_ip = guest_ip;
    auto mapping = net::ParsePort("127.0.0.1:18080:80/tcp");
    REQUIRE(mapping.ok());
    req.ports = {*mapping};
    auto rules = net::BuildPortRules(req, opts);
    REQUIRE_MESSAGE(rules.ok(), rules.status().ToString());
    auto tag = net::ReplaceTaggedRules(opts, net::RuleTag(opts, vm_id, net::RuleKind::kPorts), *rules);
    REQUIRE_MESSAGE(tag.ok(), tag.status().ToString());
  }
}

size_t RuleCount(const std::string& vm_id, net::RuleKind kind) {
  const net::IptablesOptions opts;
  auto rules = net::ListVmRules(opts, vm_id);
  REQUIRE(rules.ok());
  std::string family = net::RuleTag(opts, vm_id, kind) + ":";
  size_t n = 0;
  for (const auto& r : *rules) n += r.comment.rfind(family, 0) == 0 ? 1 : 0;
  return n;
}

// Holds a TAP open as a running VMM would (the TAP then has a carrier).
class OpenTap {
 public:
  explicit OpenTap(const std::string& name) {
    fd_ = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    REQUIRE(fd_ >= 0);
    ifreq req{};
    std::strncpy(req.ifr_name, name.c_str(), IFNAMSIZ - 1);
    req.ifr_flags = IFF_TAP | IFF_NO_PI;
    REQUIRE(::ioctl(fd_, TUNSETIFF, &req) == 0);
  }
  ~OpenTap() { ::close(fd_); }

 private:
  int fd_ = -1;
};

}  // namespace

TEST_CASE("reconcile removes the host networking of the VMs its store knows, and nothing else") {
  const std::string pid = std::to_string(::getpid());
  testing::TempDir dir;
  FirecrackerOptions fc;
  fc.tap_prefix = "rct";
  fc.netns_prefix = "fcwarm-rc" + pid + "-";
  QemuOptions qemu;
  qemu.netns_prefix = "rcn";
  qemu.veth_prefix = "rcv";

  // The store of the "crashed" process: a Firecracker VM and a QEMU VM left running, a Firecracker VM left
  // running whose TAP index a running VMM now holds open, and a destroyed VM whose rules a failed release
  // left.
  auto store = Store::Open({(dir.path() / "fcwarm.db").string()});
  REQUIRE(store.ok());
  const std::string fc_vm = Id::Generate().str(), qemu_vm = Id::Generate().str(),
                    busy_vm = Id::Generate().str(), old_vm = Id::Generate().str(),
                    unknown_vm = Id::Generate().str();  // another process's: not in this store
  auto seeded = detail::DbOf(**store).Tx([&](SQLite::Database& db) -> Status {
    for (const char* backend : {"firecracker", "qemu"}) {
      RuntimeImage image;
      image.id = std::string("img-") + backend;
      image.name = image.id;
      image.backend = backend;
      image.kernel_path = "/nonexistent/vmlinux";
      image.shape.memory_mib = 64;
      detail::InsertImage(db, image);
    }
    struct Seed {
      std::string id, image;
      VmState state;
      int64_t index;
    };
    for (const Seed& s : {Seed{fc_vm, "img-firecracker", VmState::kRunning, 3},
                          Seed{qemu_vm, "img-qemu", VmState::kRunning, 5},
                          Seed{busy_vm, "img-firecracker", VmState::kStarting, 4},
                          Seed{old_vm, "img-firecracker", VmState::kDestroyed, -1}}) {
      VmRecord rec;
      rec.id = s.id;
      rec.name = s.id;
      rec.runtime_image_id = s.image;
      rec.work_dir = (dir.path() / "vms" / s.id).string();
      detail::InsertVm(db, rec, 1);
      detail::SetVmState(db, s.id, s.state, "", 1);
      if (s.index >= 0) {
        std::string n = std::to_string(s.index);
        detail::AllocateAddress(db, s.index, s.id, "02:fc:00:00:00:0" + n, "10.251." + n + ".2/30", 1);
      }
    }
    return Status::Ok();
  });
  REQUIRE_MESSAGE(seeded.ok(), seeded.ToString());

  // What the crash left on the host, plus the same kinds of things of the unknown VM.
  net::NetnsPlan qnames;
  REQUIRE(net::NamesForVm(qemu_vm, qemu.netns_prefix, qemu.veth_prefix, &qnames).ok());
  const std::string fc_netns = fc.netns_prefix + fc_vm, unknown_netns = fc.netns_prefix + unknown_vm;
  // An interrupted build: its work directory is named after its VM; a Firecracker and a QEMU build VM's
  // namespaces (build VMs have no rules).
  const std::string build_vm = Id::Generate().str();
  fs::create_directories(dir.path() / "build" / build_vm);
  net::NetnsPlan bnames;
  REQUIRE(net::NamesForVm(build_vm, qemu.netns_prefix, qemu.veth_prefix, &bnames).ok());
  const std::string fc_build_netns = fc.netns_prefix + build_vm;
  std::vector<std::string> namespaces{fc_netns, qnames.netns, unknown_netns, fc_build_netns, bnames.netns};
  util::ScopeGuard remove_namespaces([&] {
    for (const auto& ns : namespaces) (void)net::DeleteNetnsIfPresent("ip", ns, 10s);
  });
  for (const auto& ns : namespaces) Ip({"netns", "add", ns});
  Ip({"link", "add", qnames.host_veth, "type", "veth", "peer", "name", "veth0", "netns", qnames.netns});
  for (const char* tap : {"rct3", "rct4", "rct9"}) {
    Ip({"tuntap", "add", "dev", tap, "mode", "tap"});
    Ip({"link", "set", "dev", tap, "up"});
  }
  OpenTap busy_tap("rct4");  // index 4: held by a running VMM (here: this test)
  CHECK(net::InterfaceHasCarrier("rct4"));
  CHECK_FALSE(net::InterfaceHasCarrier("rct3"));
  LeaveRules(fc_vm, "rct3", "10.251.0.2", true, true);
  LeaveRules(qemu_vm, qnames.host_veth, "10.251.0.6", true, false);
  LeaveRules(old_vm, "rct7", "10.251.0.10", false, true);
  LeaveRules(unknown_vm, "rct9", "10.251.0.14", true, true);
  util::ScopeGuard remove_unknown_rules([&] {
    (void)net::DeleteVmRules({}, {unknown_vm});
    (void)net::RemoveBaseChains({});
  });

  VmmRegistry vmms;
  vmms.Add(std::shared_ptr<Vmm>(MakeFirecrackerVmm(fc)));
  vmms.Add(std::shared_ptr<Vmm>(MakeQemuVmm(qemu)));
  SnapshotManagerOptions so;
  so.root_dir = (dir.path() / "snapshots").string();
  so.build_dir = (dir.path() / "build").string();
  so.reconcile_processes = false;
  auto manager = SnapshotManager::Create(**store, vmms, so);
  REQUIRE_MESSAGE(manager.ok(), manager.status().ToString());
  const auto& report = (*manager)->reconcile_report();
  CHECK(report.lost_vms == 3);
  // fc_vm, qemu_vm (rules and devices), old_vm (rules), build_vm (namespaces)
  CHECK(report.released_networks == 4);

  // The store's VMs: no rule left, their devices gone — but the TAP a running VMM holds.
  for (const auto& id : {fc_vm, qemu_vm, old_vm}) {
    CAPTURE(id);
    CHECK(RuleCount(id, net::RuleKind::kEgress) == 0);
    CHECK(RuleCount(id, net::RuleKind::kPorts) == 0);
  }
  CHECK_FALSE(net::InterfaceExists("rct3"));
  CHECK_FALSE(net::NetnsExists(fc_netns));
  CHECK_FALSE(net::InterfaceExists(qnames.host_veth));
  CHECK_FALSE(net::NetnsExists(qnames.netns));
  CHECK(net::InterfaceExists("rct4"));
  CHECK_FALSE(net::NetnsExists(fc_build_netns));
  CHECK_FALSE(net::NetnsExists(bnames.netns));
  // The unknown VM keeps everything.
  CHECK(RuleCount(unknown_vm, net::RuleKind::kEgress) > 0);
  CHECK(RuleCount(unknown_vm, net::RuleKind::kPorts) > 0);
  CHECK(net::InterfaceExists("rct9"));
  CHECK(net::NetnsExists(unknown_netns));

  // A second start finds nothing more to remove.
  manager->reset();
  auto again = SnapshotManager::Create(**store, vmms, so);
  REQUIRE(again.ok());
  CHECK((*again)->reconcile_report().lost_vms == 0);
  CHECK((*again)->reconcile_report().released_networks == 0);
  CHECK(RuleCount(unknown_vm, net::RuleKind::kEgress) > 0);
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--list", 6) == 0 || std::strncmp(argv[i], "-l", 2) == 0) {
      return doctest::Context(argc, argv).run();
    }
  }
  if (::geteuid() != 0) {
    std::printf("SKIP: net_reconcile_test needs root (network namespaces, iptables)\n");
    return 0;
  }
  // Before any thread or child exists: a network namespace of our own (see the file comment).
  if (::unshare(CLONE_NEWNET) != 0) {
    std::printf("SKIP: unshare(CLONE_NEWNET): %s\n", std::strerror(errno));
    return 0;
  }
  for (const char* prog : {"iptables-save", "iptables-restore", "ip"}) {
    if (!util::FindProgram(prog)) {
      std::fprintf(stderr,
                   "net_reconcile_test: %s not found (scripts/setup.sh installs iptables and iproute2)\n",
                   prog);
      return 1;
    }
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
