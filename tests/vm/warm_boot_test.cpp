// The warm-boot core driven end to end against real QEMU VMs (label `vm`): Service + QemuVmm + guest agent.
// Prints "SKIP: <reason>" and passes when QEMU or the guest artifacts are missing.
#include <doctest/doctest.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <set>
#include <thread>

#include "backends/host_leftovers.hpp"
#include "fcwarm/fcwarm.hpp"
#include "net/iptables.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"
#include "util/process.hpp"
#include "util/scope_guard.hpp"
#include "vm/vm_support.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
using namespace fcwarm::vmtest;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Kills the QEMU of the next `n` restores with SIGKILL while they restore (a test decorator over the real
// backend: the process is real, the kill is injected).
class KillingVmm : public Vmm, public HostLeftovers {
 public:
  explicit KillingVmm(std::shared_ptr<Vmm> inner) : inner_(std::move(inner)) {}
  std::string Kind() const override { return inner_->Kind(); }
  Result<std::map<std::string, std::string>> HostCompatibility() override { return inner_->HostCompatibility(); }
  Result<std::unique_ptr<Vm>> ColdBoot(const LaunchSpec& spec) override { return inner_->ColdBoot(spec); }
  Result<std::unique_ptr<Vm>> Adopt(const LaunchSpec& spec, const AdoptTarget& target) override {
    return inner_->Adopt(spec, target);
  }
  Result<int> RemoveVmLeftovers(const std::string& vm_id, int64_t index) override {
    auto* inner = dynamic_cast<HostLeftovers*>(inner_.get());
    return inner ? inner->RemoveVmLeftovers(vm_id, index) : Result<int>(0);
  }
  Result<std::unique_ptr<Vm>> Restore(const LaunchSpec& spec, const std::string& dir) override {
    if (kill_next_restores <= 0) return inner_->Restore(spec, dir);
    kill_next_restores--;
    LaunchSpec s = spec;
    s.on_process_started = [orig = spec.on_process_started, this](int pid) {
      if (orig) orig(pid);
      killed_pids.push_back(pid);
      ::kill(pid, SIGKILL);
    };
    return inner_->Restore(s, dir);
  }
  std::atomic<int> kill_next_restores{0};
  std::vector<int> killed_pids;

 private:
  std::shared_ptr<Vmm> inner_;
};

// Per-bed prefixes of network namespaces and veth names, so that leak checks count only this bed's devices
// (not those of VMs another test or program runs on the machine at the same time).
std::string BedPrefix() {
  static std::atomic<unsigned> n{0};
  char buf[8];
  std::snprintf(buf, sizeof buf, "t%03x", (static_cast<unsigned>(::getpid()) * 7 + n++) & 0xfff);
  return buf;
}

struct QemuBed {
  TempDir dir;
  std::string prefix = BedPrefix();
  std::string netns_prefix = prefix + "-";  // "tXXX-" + 10 hex digits
  std::string veth_prefix = prefix + "h";   // "tXXXh" + 10 hex digits = 15 characters, the kernel's limit
  std::shared_ptr<KillingVmm> vmm;
  std::shared_ptr<VmmRegistry> vmms = std::make_shared<VmmRegistry>();
  std::unique_ptr<Service> svc;
  RuntimeImage image;

  explicit QemuBed(std::function<void(ServiceOptions&)> tweak = {}) {
    QemuOptions q;
    q.netns_prefix = netns_prefix;
    q.veth_prefix = veth_prefix;
    vmm = std::make_shared<KillingVmm>(std::shared_ptr<Vmm>(MakeQemuVmm(q)));
    vmms->Add(vmm);
    auto o = ServiceOptions::UnderDirectory(dir.str());
    o.health.rebuild_backoff_initial = 100ms;
    if (tweak) tweak(o);
    opts = o;
    auto s = Service::Open(o, vmms);
    REQUIRE_MESSAGE(s.ok(), s.status().ToString());
    svc = std::move(s).value();
    RuntimeImage img;
    img.name = "minimal";
    img.backend = "qemu";
    img.kernel_path = (fs::path(GuestDir()) / "bzImage").string();
    img.initrd_path = (fs::path(GuestDir()) / "initramfs.cpio.gz").string();
    img.rootfs_path = (fs::path(GuestDir()) / "disk.ext4").string();
    img.shape.memory_mib = 256;
    img.runtime_check = {"file", "/run/fcwarm-runtime-ready", {}};
    auto r = svc->images().Register(img);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    image = *r;
  }
  ~QemuBed() {
    svc.reset();
    if (!opts.restore.stop_vms_on_exit) {
      // A live-restore test that failed half-way left its VMs running: adopt them and stop them.
      opts.restore.stop_vms_on_exit = true;
      auto s = Service::Open(opts, vmms);
      if (!s.ok()) MESSAGE("cannot clean up after the test: " << s.status().ToString());
    }
  }

  // Closes the service (as a restart of its process would) and opens it again on the same store and backends;
  // `tweak` changes the options of the new one.
  void Reopen(std::function<void(ServiceOptions&)> tweak = {}) {
    svc.reset();
    if (tweak) tweak(opts);
    auto s = Service::Open(opts, vmms);
    REQUIRE_MESSAGE(s.ok(), s.status().ToString());
    svc = std::move(s).value();
  }

  ServiceOptions opts;

  RuntimeSnapshot Build() {
    auto s = svc->snapshots().CreateSnapshot(image.id);
    REQUIRE(s.ok());
    auto done = svc->snapshots().WaitWhileCreating(s->id, 300s);
    REQUIRE(done.ok());
    REQUIRE_MESSAGE(done->state == SnapshotState::kReady, done->last_error);
    return *done;
  }
  std::string Exec(const std::string& vm_id, std::vector<std::string> argv) {
    auto h = svc->engine().Handle(vm_id);
    REQUIRE(h.ok());
    ExecRequest req;
    req.argv = std::move(argv);
    auto r = (*h)->guest().Exec(req, 20s);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    CHECK(r->exit_code == 0);
    return r->stdout_data;
  }
};

int CountNetns(const std::string& prefix) {
  auto r = util::Run({"ip", "netns", "list"}, 10s);
  if (!r.ok()) return -1;
  int n = 0;
  size_t pos = 0;
  while ((pos = r->output.find(prefix, pos)) != std::string::npos) {
    if (pos == 0 || r->output[pos - 1] == '\n') ++n;
    pos += prefix.size();
  }
  return n;
}

int CountLinks(const std::string& prefix) {
  auto r = util::Run({"ip", "-o", "link", "show"}, 10s);
  if (!r.ok()) return -1;
  int n = 0;
  size_t pos = 0;
  while ((pos = r->output.find(": " + prefix, pos)) != std::string::npos) {
    ++n;
    pos += prefix.size();
  }
  return n;
}

// True once a killed process is a zombie or gone.
bool KillLanded(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  return close == std::string::npos || close + 2 >= s.size() || s[close + 2] == 'Z' || s[close + 2] == 'X';
}

}  // namespace

TEST_CASE("core+qemu: cold boot, build, 4 concurrent warm restores that are unique and isolated") {
  SKIP_UNLESS_READY();
  QemuBed bed;
  auto snap = bed.Build();
  CHECK(snap.files.size() >= 3);
  std::vector<std::future<Result<VmRecord>>> futures;
  for (int i = 0; i < 4; ++i) {
    futures.push_back(std::async(std::launch::async, [&, i] {
      return bed.svc->engine().Provision({.runtime_image_id = bed.image.id, .name = "clone-" + std::to_string(i)});
    }));
  }
  std::vector<VmRecord> vms;
  for (auto& f : futures) {
    auto r = f.get();
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    CHECK_MESSAGE(r->boot_method == BootMethod::kWarm, ToString(r->fallback_reason));
    vms.push_back(*r);
  }
  std::set<std::string> hostnames, macs, ips, randoms;
  for (const auto& vm : vms) {
    auto h = bed.svc->engine().Handle(vm.id);
    REQUIRE(h.ok());
    auto ping = (*h)->guest().Ping(5s);
    REQUIRE(ping.ok());
    CHECK(ping->hostname == vm.hostname);
    hostnames.insert(bed.Exec(vm.id, {"cat", "/proc/sys/kernel/hostname"}));
    macs.insert(bed.Exec(vm.id, {"cat", "/sys/class/net/eth0/address"}));
    ips.insert(bed.Exec(vm.id, {"ip", "-4", "-o", "addr", "show", "dev", "eth0"}));
    auto rnd = bed.Exec(vm.id, {"head", "-c", "32", "/dev/urandom"});
    CHECK(rnd.size() == 32);
    randoms.insert(rnd);
    CHECK_MESSAGE(Reachable(vm.address.substr(0, vm.address.find('/'))), vm.address);
  }
  CHECK(hostnames.size() == 4);
  CHECK(macs.size() == 4);
  CHECK(ips.size() == 4);
  CHECK(randoms.size() == 4);
  // A file written in one clone's disk is absent in the others.
  bed.Exec(vms[0].id, {"sh", "-c", "echo only-in-clone-0 > /mnt/data/clone-file && sync"});
  CHECK(bed.Exec(vms[0].id, {"cat", "/mnt/data/clone-file"}) == "only-in-clone-0\n");
  for (size_t i = 1; i < vms.size(); ++i) {
    auto h = bed.svc->engine().Handle(vms[i].id);
    ExecRequest req;
    req.argv = {"test", "-e", "/mnt/data/clone-file"};
    auto r = (*h)->guest().Exec(req, 20s);
    REQUIRE(r.ok());
    CHECK(r->exit_code != 0);
  }
  auto s = bed.svc->snapshots().Get(snap.id);
  CHECK(s->success_count == 4);
  for (const auto& vm : vms) REQUIRE(bed.svc->engine().Destroy(vm.id).ok());
  CHECK(CountEntries(fs::path(bed.dir.path()) / "vms") == 0);
}

TEST_CASE("core+qemu: a flipped byte is corrupt, three in a row rebuild the snapshot, then warm again") {
  SKIP_UNLESS_READY();
  QemuBed bed;
  auto snap = bed.Build();
  // The largest file is the guest memory (or the state stream): flip one byte in its middle.
  auto biggest = std::max_element(snap.files.begin(), snap.files.end(),
                                  [](const SnapshotFile& a, const SnapshotFile& b) { return a.size < b.size; });
  fs::path victim = fs::path(snap.generation_dir) / biggest->name;
  for (int i = 0; i < 3; ++i) {
    {
      std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
      REQUIRE(f);
      f.seekg(static_cast<std::streamoff>(biggest->size / 2 + i));
      char c = 0;
      f.read(&c, 1);
      c = static_cast<char>(c ^ 0x40);
      f.seekp(static_cast<std::streamoff>(biggest->size / 2 + i));
      f.write(&c, 1);
    }
    auto vm = bed.svc->engine().Provision({.runtime_image_id = bed.image.id, .wait_for_creating = 0ms});
    REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
    CHECK(vm->boot_method == BootMethod::kCold);
    CHECK(vm->fallback_reason == FallbackReason::kCorrupt);
    CHECK(bed.svc->snapshots().Get(snap.id)->failure_count == i + 1);
    REQUIRE(bed.svc->engine().Destroy(vm->id).ok());
  }
  // Unhealthy after three; HealthTracker rebuilt it automatically.
  CHECK(bed.svc->health().automatic_rebuilds() == 1);
  auto rebuilt = bed.svc->snapshots().WaitWhileCreating(snap.id, 300s);
  REQUIRE(rebuilt.ok());
  REQUIRE_MESSAGE(rebuilt->state == SnapshotState::kReady, rebuilt->last_error);
  CHECK(rebuilt->generation == 2);
  auto warm = bed.svc->engine().Provision({.runtime_image_id = bed.image.id});
  REQUIRE(warm.ok());
  CHECK(warm->boot_method == BootMethod::kWarm);
  REQUIRE(bed.svc->engine().Destroy(warm->id).ok());
  CHECK_FALSE(fs::exists(snap.generation_dir));  // the corrupt generation was collected
}

TEST_CASE("core+qemu: QEMU killed with SIGKILL during a restore falls back to cold and leaks nothing") {
  SKIP_UNLESS_READY();
  QemuBed bed;
  bed.Build();
  int qemu_before = CountQemuProcesses(bed.dir.str());
  int netns_before = CountNetns(bed.netns_prefix);
  int links_before = CountLinks(bed.veth_prefix);
  bed.vmm->kill_next_restores = 1;
  auto vm = bed.svc->engine().Provision({.runtime_image_id = bed.image.id});
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  CHECK(vm->boot_method == BootMethod::kCold);
  CHECK(vm->fallback_reason == FallbackReason::kRestoreFailed);
  REQUIRE(bed.vmm->killed_pids.size() == 1);
  CHECK(::kill(bed.vmm->killed_pids[0], 0) != 0);
  // Only the cold VM's own resources exist now.
  CHECK(CountQemuProcesses(bed.dir.str()) == qemu_before + 1);
  CHECK(CountNetns(bed.netns_prefix) == netns_before + 1);
  CHECK(CountLinks(bed.veth_prefix) == links_before + 1);
  CHECK(CountEntries(fs::path(bed.dir.path()) / "vms") == 1);
  REQUIRE(bed.svc->engine().Destroy(vm->id).ok());
  CHECK(CountQemuProcesses(bed.dir.str()) == qemu_before);
  CHECK(CountNetns(bed.netns_prefix) == netns_before);
  CHECK(CountLinks(bed.veth_prefix) == links_before);
  CHECK(CountEntries(fs::path(bed.dir.path()) / "vms") == 0);
  // No socket or overlay is left anywhere under the data directory but the snapshot's own files.
  for (const auto& e : fs::recursive_directory_iterator(bed.dir.path())) {
    if (e.is_socket()) FAIL_CHECK("socket leaked: " << e.path());
    if (e.path().extension() == ".qcow2" && e.path().string().find("/snapshots/") == std::string::npos) {
      FAIL_CHECK("overlay leaked: " << e.path());
    }
  }
}

TEST_CASE("core+qemu: a VM's egress rules exist while it runs and are gone with it") {
  SKIP_UNLESS_READY();
  // egress none: the guest may reach only the (documentation-range) resolver and allowed mirror, nothing else;
  // no packet is sent by this test, the policy is checked in the host's rule set. Egress turns IPv4 forwarding
  // on; the test puts back what it found, and the engine removes the fcwarm chains when it goes away.
  auto forward = util::ReadFile("/proc/sys/net/ipv4/ip_forward", 16);
  REQUIRE(forward.ok());
  util::ScopeGuard restore_forward([&] { std::ofstream("/proc/sys/net/ipv4/ip_forward") << *forward; });
  QemuBed bed([](ServiceOptions& o) {
    o.restore.egress = "none";
    o.restore.dns = {"192.0.2.53"};
    o.restore.registry_mirrors = {"http://192.0.2.80:5000"};
  });
  auto vm = bed.svc->engine().Provision({.runtime_image_id = bed.image.id});
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  auto rules = net::ListVmRules({}, vm->id);
  REQUIRE_MESSAGE(rules.ok(), rules.status().ToString());
  REQUIRE_FALSE(rules->empty());
  std::string all;
  for (const auto& r : *rules) all += r.spec + "\n";
  std::string guest_ip = vm->address.substr(0, vm->address.find('/'));
  CHECK_MESSAGE(all.find(guest_ip) != std::string::npos, all);
  CHECK_MESSAGE(all.find("192.0.2.53") != std::string::npos, all);  // DNS to the resolver
  CHECK_MESSAGE(all.find("192.0.2.80") != std::string::npos, all);  // the mirror, under egress none
  CHECK_MESSAGE(all.find("10.213.0.0/16") != std::string::npos, all);  // other VMs: never
  REQUIRE(bed.svc->engine().Destroy(vm->id).ok());
  auto after = net::ListVmRules({}, vm->id);
  REQUIRE(after.ok());
  CHECK(after->empty());
  bed.svc.reset();
  auto chains = util::Run({"iptables-save"}, 20s);
  REQUIRE(chains.ok());
  CHECK_MESSAGE(chains->output.find("fcwarm:vm:" + vm->id) == std::string::npos, chains->output);
}

// The clone pool against real QEMU clones (issue 14 §2): take without a restore step, refill, a killed pooled
// VMM never handed out, a rebuild drains the pool, nothing left after shutdown. The image is registered after
// the service started: the pool resolves "minimal" by name once it exists.
TEST_CASE("core+qemu: pool: take without restore, refill, killed clone never handed out, rebuild drains") {
  SKIP_UNLESS_READY();
  auto bed = std::make_unique<QemuBed>([](ServiceOptions& o) { o.restore.pool = {{"minimal", 1}}; });
  auto& engine = bed->svc->engine();
  auto pool = [&] {
    auto p = engine.Pool();
    REQUIRE(p.size() == 1);
    return p.front();
  };
  auto discarded = [&](const std::string& reason) {
    auto p = pool();
    return p.discarded.count(reason) ? p.discarded.at(reason) : 0;
  };
  auto snap = bed->Build();
  REQUIRE(Eventually([&] { return pool().clones.size() == 1; }, 120s));
  auto first = pool().clones.front();
  CHECK(first.pss_bytes.value_or(0) > 0);
  CHECK(engine.Get(first.vm_id)->state == VmState::kPooled);

  // 1. A request takes the clone: no restore on its path, one ping, the record under the request's id.
  const std::string id = Id::Generate().str();
  auto vm = engine.Provision({.runtime_image_id = bed->image.id, .vm_id = id, .name = "pooled-1"});
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  CHECK(vm->id == id);
  CHECK(vm->pooled);
  CHECK(vm->instance_id == first.vm_id);
  CHECK(vm->boot_method == BootMethod::kWarm);
  CHECK(vm->timings.count("restore") == 0);
  CHECK(vm->timings.count("pool_take") == 1);
  CHECK(vm->timings.count("agent") == 1);
  MESSAGE("pooled take: total " << vm->timings.at("total") << " ms, ping " << vm->timings.at("agent") << " ms");
  CHECK(bed->Exec(id, {"cat", "/proc/sys/kernel/hostname"}) == vm->hostname + "\n");

  // 2. The pool refills with a fresh, different clone.
  REQUIRE(Eventually([&] { return pool().clones.size() == 1 && pool().filled == 2; }, 120s));
  auto second = pool().clones.front();
  CHECK(second.vm_id != first.vm_id);

  // 3. Its QEMU is killed: the next request never gets it (it restores itself or takes a newer clone).
  REQUIRE(::kill(second.pid, SIGKILL) == 0);
  REQUIRE(Eventually([&] { return KillLanded(second.pid); }, 5s));
  auto after_kill = engine.Provision({.runtime_image_id = bed->image.id});
  REQUIRE_MESSAGE(after_kill.ok(), after_kill.status().ToString());
  CHECK(after_kill->instance_id != second.vm_id);
  CHECK(after_kill->boot_method == BootMethod::kWarm);
  CHECK(bed->Exec(after_kill->id, {"true"}).empty());
  CHECK(Eventually([&] { return discarded("dead") == 1; }, 30s));
  CHECK(engine.Get(second.vm_id)->state == VmState::kDestroyed);
  REQUIRE(engine.Destroy(after_kill->id).ok());

  // 4. A rebuild drains the pool; it refills from the new generation.
  REQUIRE(Eventually([&] { return pool().clones.size() == 1; }, 120s));
  auto old_clone = pool().clones.front();
  REQUIRE(bed->svc->snapshots().Rebuild(snap.id).ok());
  CHECK(Eventually([&] { return discarded("rebuilt") >= 1; }, 30s));
  CHECK(Eventually([&] { return engine.Get(old_clone.vm_id)->state == VmState::kDestroyed; }, 30s));
  auto rebuilt = bed->svc->snapshots().WaitWhileCreating(snap.id, 300s);
  REQUIRE(rebuilt.ok());
  REQUIRE_MESSAGE(rebuilt->state == SnapshotState::kReady, rebuilt->last_error);
  REQUIRE(Eventually([&] { return pool().clones.size() == 1; }, 120s));
  CHECK(pool().clones.front().generation == rebuilt->generation);

  // 5. Shutdown destroys the pooled clone: no QEMU, namespace or work directory of this bed is left.
  REQUIRE(engine.Destroy(id).ok());
  auto dir = bed->dir.str();
  auto netns = bed->netns_prefix;
  bed->svc.reset();
  CHECK(CountQemuProcesses(dir) == 0);
  CHECK(CountNetns(netns) == 0);
  CHECK(CountEntries(fs::path(dir) / "vms") == 0);
}

namespace {

// GET http://127.0.0.1:PORT/ with curl; the body, or empty when nothing answered within 5 s.
std::string HttpGet(int port) {
  auto r = util::Run({"curl", "-s", "--max-time", "5", "http://127.0.0.1:" + std::to_string(port) + "/"}, 10s);
  return r.ok() && r->exit_code == 0 ? r->output : "";
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

// Live restore (issue 15 §1): with stop_vms_on_exit off, closing the service leaves its VMs running; the next
// service on the same store re-adopts them (process, QMP, guest channel, published port); a VM whose QEMU died
// meanwhile is lost and everything it held is released; a re-adopted VM is destroyed like any other.
TEST_CASE("core+qemu: live restore: VMs outlive the service, are re-adopted with their ports, a dead one is lost") {
  SKIP_UNLESS_READY();
  QemuBed bed([](ServiceOptions& o) { o.restore.stop_vms_on_exit = false; });
  const int port = FreePort();
  auto web = bed.svc->engine().Provision(
      {.runtime_image_id = bed.image.id, .name = "web", .ports = {"127.0.0.1:" + std::to_string(port) + ":8080/tcp"}});
  REQUIRE_MESSAGE(web.ok(), web.status().ToString());
  auto other = bed.svc->engine().Provision({.runtime_image_id = bed.image.id, .name = "other"});
  REQUIRE_MESSAGE(other.ok(), other.status().ToString());
  bed.Exec(web->id, {"sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www"});
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    served = HttpGet(port) == web->hostname + "\n";
    if (!served) std::this_thread::sleep_for(100ms);
  }
  REQUIRE_MESSAGE(served, "the guest's web server does not answer on host port " << port);
  const int web_pid = (*bed.svc->engine().Handle(web->id))->pid();
  const int other_pid = (*bed.svc->engine().Handle(other->id))->pid();
  REQUIRE(web_pid > 0);
  REQUIRE(other_pid > 0);

  // 1. Close: both keep running; reopen: both re-adopted, the port still answers, the guest still runs its
  //    server (its state was never interrupted), exec works.
  bed.Reopen();
  CHECK(::kill(web_pid, 0) == 0);
  CHECK(::kill(other_pid, 0) == 0);
  CHECK(bed.svc->engine().adoption_report().adopted == 2);
  CHECK(bed.svc->engine().adoption_report().lost == 0);
  CHECK(bed.svc->engine().Get(web->id)->state == VmState::kRunning);
  CHECK(HttpGet(port) == web->hostname + "\n");
  CHECK(bed.Exec(web->id, {"cat", "/proc/sys/kernel/hostname"}) == web->hostname + "\n");
  CHECK((*bed.svc->engine().Handle(web->id))->pid() == web_pid);
  CHECK(CountNetns(bed.netns_prefix) == 2);

  // 2. The other VM's QEMU dies while no service runs: the next one loses it and releases what it held.
  bed.svc.reset();
  REQUIRE(::kill(other_pid, SIGKILL) == 0);
  for (int i = 0; i < 100 && !KillLanded(other_pid); ++i) std::this_thread::sleep_for(20ms);
  bed.Reopen();
  CHECK(bed.svc->engine().adoption_report().adopted == 1);
  CHECK(bed.svc->engine().adoption_report().lost == 1);
  auto lost = bed.svc->engine().Get(other->id);
  REQUIRE(lost.ok());
  CHECK(lost->state == VmState::kLost);
  CHECK_MESSAGE(lost->last_error.find("could not be re-adopted") != std::string::npos, lost->last_error);
  CHECK_FALSE(fs::exists(other->work_dir));
  CHECK(CountNetns(bed.netns_prefix) == 1);
  CHECK(CountLinks(bed.veth_prefix) == 1);
  CHECK(HttpGet(port) == web->hostname + "\n");

  // 3. A re-adopted VM is destroyed like any other: process, namespace, rules, port, work directory.
  REQUIRE(bed.svc->engine().Destroy(web->id).ok());
  for (int i = 0; i < 100 && !KillLanded(web_pid); ++i) std::this_thread::sleep_for(20ms);
  CHECK(KillLanded(web_pid));
  CHECK(CountNetns(bed.netns_prefix) == 0);
  CHECK(CountLinks(bed.veth_prefix) == 0);
  auto rules = net::ListVmRules({}, web->id);
  REQUIRE(rules.ok());
  CHECK(rules->empty());
  CHECK(HttpGet(port).empty());
  CHECK_FALSE(fs::exists(web->work_dir));
}
