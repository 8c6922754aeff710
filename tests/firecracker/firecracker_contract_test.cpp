// Contract tests of the Firecracker backend against the strict API double (fake_firecracker.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "backends/firecracker/api_client.hpp"
#include "backends/firecracker/vsock.hpp"
#include "fcwarm/firecracker_vmm.hpp"
#include "net/iptables.hpp"
#include "net/ports.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"
#include "util/process.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using fcwarm::testing::TempDir;
using fcwarm::testing::WriteFile;

namespace fcwarm {
namespace {

// Sets environment variables for the fake binary for one test and restores them afterwards.
class FakeEnv {
 public:
  FakeEnv& Set(const std::string& k, const std::string& v) {
    if (!saved_.count(k)) {
      const char* old = std::getenv(k.c_str());
      saved_[k] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    ::setenv(k.c_str(), v.c_str(), 1);
    return *this;
  }
  FakeEnv& Unset(const std::string& k) {
    if (!saved_.count(k)) {
      const char* old = std::getenv(k.c_str());
      saved_[k] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    ::unsetenv(k.c_str());
    return *this;
  }
  ~FakeEnv() {
    for (auto& [k, v] : saved_) {
      if (v) {
        ::setenv(k.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(k.c_str());
      }
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

struct LoggedRequest {
  std::string method, path;
  json::value body;
  int status = 0;
  std::string fault;
};

std::vector<LoggedRequest> ReadLog(const fs::path& p) {
  std::vector<LoggedRequest> out;
  std::ifstream f(p);
  std::string line;
  while (std::getline(f, line)) {
    auto v = json::parse(line).as_object();
    LoggedRequest r;
    r.method = std::string(v.at("method").as_string());
    r.path = std::string(v.at("path").as_string());
    r.body = v.at("body");
    r.status = static_cast<int>(v.at("status").as_int64());
    if (v.contains("fault")) r.fault = std::string(v.at("fault").as_string());
    out.push_back(std::move(r));
  }
  return out;
}

const LoggedRequest* Find(const std::vector<LoggedRequest>& log, const std::string& method,
                          const std::string& path) {
  for (const auto& r : log) {
    if (r.method == method && r.path == path) return &r;
  }
  return nullptr;
}

bool Alive(int pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH); }

bool CanManageTaps() {
  static int cached = -1;
  if (cached < 0) {
    auto r = util::Run({"ip", "tuntap", "add", "dev", "fctprobe", "mode", "tap"}, 5s);
    cached = r.ok() && r->exit_code == 0 ? 1 : 0;
    if (cached) (void)util::Run({"ip", "link", "del", "dev", "fctprobe"}, 5s);
    auto ns = util::Run({"ip", "netns", "add", "fcwarm-probe"}, 5s);
    if (!(ns.ok() && ns->exit_code == 0)) cached = 0;
    (void)util::Run({"ip", "netns", "del", "fcwarm-probe"}, 5s);
  }
  return cached == 1;
}

std::vector<std::string> Sockets(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (e.is_socket()) out.push_back(e.path().string());
  }
  return out;
}

bool NetnsExists(const std::string& name) { return fs::exists("/run/netns/" + name); }

// Root with iptables and TAPs: the backend's host rules (egress, published ports) can be checked. They go
// into the root namespace's rule set, like a server's; the test that applies them puts ip_forward back and
// removes the fcwarm chains when no tagged rule is left (HostRulesGuard).
bool CanManageRules() {
  static const bool ok = ::geteuid() == 0 && util::FindProgram("iptables-save") &&
                         util::FindProgram("iptables-restore") && CanManageTaps();
  return ok;
}

// The lines of `iptables-save` that carry a tag of this VM (its egress and published-port rules).
std::string SavedVmRules(const std::string& vm_id) {
  auto r = util::Run({"iptables-save"}, 20s);
  REQUIRE(r.ok());
  REQUIRE(r->exit_code == 0);
  std::string out, line;
  std::istringstream in(r->output);
  while (std::getline(in, line)) {
    if (line.find("fcwarm:vm:" + vm_id + ":") != std::string::npos) out += line + "\n";
  }
  return out;
}

// Puts back what applying host rules changes outside the rules themselves: net.ipv4.ip_forward (ApplyEgress
// turns it on and never off) and the fcwarm chains (removed once no tagged rule of any process is left).
class HostRulesGuard {
 public:
  HostRulesGuard() : forward_(util::ReadFile("/proc/sys/net/ipv4/ip_forward", 16)) { REQUIRE(forward_.ok()); }
  ~HostRulesGuard() {
    std::ofstream("/proc/sys/net/ipv4/ip_forward") << *forward_;
    if (auto st = net::RemoveBaseChains({}); !st.ok()) MESSAGE("fcwarm chains stay: " << st.ToString());
  }

 private:
  Result<std::string> forward_;
};

// A scratch world: image files, a log of API requests, backend options pointing at the fake binary.
struct World {
  TempDir dir;
  FakeEnv env;
  fs::path log = dir.path() / "api.jsonl";
  RuntimeImage image;
  FirecrackerOptions opts;
  std::vector<int> pids;
  int next_index = 0;

  explicit World(const std::string& version = "1.14.2") {
    env.Set("FCWARM_FAKE_FC_VERSION", version)
        .Set("FCWARM_FAKE_FC_LOG", log.string())
        .Set("FCWARM_FAKE_FC_CHECK_TAP", "1")
        .Unset("FCWARM_FAKE_FC_SNAPSHOT_VERSION")
        .Unset("FCWARM_FAKE_FC_NO_SOCKET")
        .Unset("FCWARM_FAKE_FC_EXIT_AT_START")
        .Unset("FCWARM_FAKE_FC_DIE_ON")
        .Unset("FCWARM_FAKE_FC_FAIL_ON");
    image.id = "img";
    image.name = "img";
    image.backend = "firecracker";
    image.kernel_path = WriteFile(dir.path() / "images" / "vmlinux", "ELF kernel");
    image.rootfs_path = WriteFile(dir.path() / "images" / "rootfs.ext4", std::string(8192, 'R'));
    image.shape.memory_mib = 64;
    opts.binary = FCWARM_FAKE_FC_PATH;
    opts.tap_prefix = "fct";
    opts.netns_prefix = "fctest-";
    opts.api_timeout = 3s;
    opts.socket_wait = 3s;
    opts.snapshot_timeout = 10s;
    opts.nic_without_identity = CanManageTaps();
  }

  LaunchSpec Spec(const std::string& name, bool network) {
    LaunchSpec s;
    s.vm_id =
        "00000000-0000-4000-8000-" + std::to_string(100000000000 + (++next_index) + ::getpid() % 1000 * 100);
    s.image = image;
    s.work_dir = (dir.path() / name).string();
    fs::create_directories(s.work_dir);
    if (network) {
      int64_t idx = 9000 + (::getpid() % 500) * 10 + next_index;
      s.network.index = idx;
      s.network.mac = "02:fc:00:00:00:0" + std::to_string(next_index % 10);
      s.network.ip_cidr = "10.250." + std::to_string(next_index) + ".2/30";
      s.network.gateway = "10.250." + std::to_string(next_index) + ".1";
      s.network.hostname = name;
    }
    s.on_process_started = [this](int pid) { pids.push_back(pid); };
    return s;
  }

  std::string Tap(const LaunchSpec& s) const { return opts.tap_prefix + std::to_string(s.network.index); }

  // Nothing of this VM is left on the host.
  void ExpectNothingLeaked(const LaunchSpec& s) {
    for (int pid : pids) CHECK_MESSAGE(!Alive(pid), "process " << pid << " is still running");
    CHECK(Sockets(s.work_dir).empty());
    if (s.network.index >= 0)
      CHECK_MESSAGE(!fs::exists("/sys/class/net/" + Tap(s)), "TAP " << Tap(s) << " leaked");
    CHECK_MESSAGE(!NetnsExists(opts.netns_prefix + s.vm_id), "netns leaked");
    if (CanManageRules())
      CHECK_MESSAGE(SavedVmRules(s.vm_id).empty(), "rules of vm " << s.vm_id << " leaked");
  }

  // Every request the backend sent was accepted by the strict double.
  void ExpectAllAccepted() {
    for (const auto& r : ReadLog(log)) {
      CHECK_MESSAGE(r.status < 400, r.method << " " << r.path << " rejected: " << r.fault);
    }
  }
};

std::string MemberNames(const json::value& v) {
  std::string out;
  for (const auto& kv : v.as_object()) out += (out.empty() ? "" : ",") + std::string(kv.key());
  return out;
}

// Cold-boots, pauses and snapshots a VM into `snap`; returns nothing, CHECKs each step.
void BuildSnapshot(World& w, const fs::path& snap, bool network) {
  auto spec = w.Spec("build", network);
  auto vm = MakeFirecrackerVmm(w.opts)->ColdBoot(spec);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  REQUIRE((*vm)->guest().Ping(2s).ok());
  REQUIRE((*vm)->Pause().ok());
  fs::create_directories(snap);
  auto st = (*vm)->Snapshot(snap.string());
  REQUIRE_MESSAGE(st.ok(), st.ToString());
  CHECK((*vm)->Stop(1s).ok());
  w.ExpectNothingLeaked(spec);
}

}  // namespace

TEST_CASE("ParseFirecrackerVersion and ProbeFirecracker") {
  auto v = ParseFirecrackerVersion("Firecracker v1.14.2\n\nsomething 3.4.5");
  REQUIRE(v.ok());
  CHECK(v->text == "1.14.2");
  CHECK(v->AtLeast(1, 14));
  CHECK_FALSE(v->AtLeast(1, 15));
  CHECK(ParseFirecrackerVersion("v8.0.0")->text == "8.0.0");
  CHECK_FALSE(ParseFirecrackerVersion("no digits").ok());

  FakeEnv env;
  env.Set("FCWARM_FAKE_FC_VERSION", "1.14.2").Unset("FCWARM_FAKE_FC_SNAPSHOT_VERSION");
  auto p = ProbeFirecracker(FCWARM_FAKE_FC_PATH);
  REQUIRE_MESSAGE(p.ok(), p.status().ToString());
  CHECK(p->text == "1.14.2");
  CHECK(p->snapshot_version == "v8.0.0");
  auto missing = ProbeFirecracker("/nonexistent/firecracker");
  CHECK(missing.status().code() == StatusCode::kNotFound);

  auto vmm = MakeFirecrackerVmm([] {
    FirecrackerOptions o;
    o.binary = FCWARM_FAKE_FC_PATH;
    return o;
  }());
  CHECK(vmm->Kind() == "firecracker");
  auto compat = vmm->HostCompatibility();
  REQUIRE(compat.ok());
  CHECK(compat->at("vmm.version") == "1.14.2");
  CHECK(compat->at("vmm.snapshot_version") == "v8.0.0");
  CHECK(compat->at("vmm.accel") == "kvm");
  // host.kernel and host.cpu are the core's (tests/unit/host_facts_test.cpp): a backend reports its VMM only.
  for (const auto& [name, value] : *compat) CHECK_MESSAGE(name.rfind("vmm.", 0) == 0, name);

  FirecrackerOptions bad;
  bad.binary = "/nonexistent/firecracker";
  CHECK(MakeFirecrackerVmm(bad)->HostCompatibility().status().code() == StatusCode::kNotFound);
}

TEST_CASE("the API double is strict") {
  World w;
  TempDir d;
  std::string sock = (d.path() / "api.sock").string();
  WriteFile(d.path() / "log", "");
  util::SpawnOptions so;
  so.argv = {FCWARM_FAKE_FC_PATH, "--api-sock", sock};
  so.cwd = d.str();
  auto child = util::Spawn(so);
  REQUIRE(child.ok());
  for (int i = 0; i < 200 && !fs::exists(sock); ++i) std::this_thread::sleep_for(5ms);
  firecracker::ApiClient api(sock);
  auto call = [&](const std::string& m, const std::string& p, const std::string& b) {
    return api.Call(m, p, b, 2s);
  };

  auto r = call("PUT", "/machine-config", R"({"vcpu_count":1,"mem_size_mib":64,"bogus":1})");
  CHECK(r.status().code() == StatusCode::kFailedPrecondition);
  CHECK(r.status().message().find("unknown field `bogus`") != std::string::npos);
  CHECK(r.status().message().find("PUT /machine-config") == 0);
  CHECK(call("PUT", "/machine-config", R"({"vcpu_count":"1","mem_size_mib":64})")
            .status()
            .message()
            .find("must be an unsigned integer") != std::string::npos);
  CHECK(call("PUT", "/actions", R"({"action_type":"InstanceStart"})")
            .status()
            .message()
            .find("without kernel configuration") != std::string::npos);
  CHECK(call("PATCH", "/vm", R"({"state":"Paused"})").status().message().find("before starting") !=
        std::string::npos);
  CHECK(call("PUT", "/boot-source", R"({"kernel_image_path":")" + w.image.kernel_path + R"("})").ok());
  // Configuration happened: a snapshot can no longer be loaded in this process.
  CHECK(call("PUT", "/snapshot/load",
             R"({"snapshot_path":"x","mem_backend":{"backend_type":"File","backend_path":"y"}})")
            .status()
            .message()
            .find("not allowed after configuring") != std::string::npos);
  CHECK(call("PUT", "/actions", R"({"action_type":"InstanceStart"})").ok());
  CHECK(call("PUT", "/machine-config", R"({"vcpu_count":1,"mem_size_mib":64})")
            .status()
            .message()
            .find("after starting") != std::string::npos);
  CHECK(call("PUT", "/snapshot/create", R"({"snapshot_path":"s","mem_file_path":"m"})")
            .status()
            .message()
            .find("must be paused") != std::string::npos);
  CHECK(call("PATCH", "/vm", R"({"state":"Paused"})").ok());
  CHECK(call("PUT", "/snapshot/create", R"({"snapshot_type":"Diff","snapshot_path":"s","mem_file_path":"m"})")
            .status()
            .message()
            .find("dirty page tracking disabled") != std::string::npos);
  CHECK(call("PUT", "/snapshot/create", R"({"snapshot_type":"Full","snapshot_path":"s","mem_file_path":"m"})")
            .ok());
  CHECK(call("GET", "/", "").ok());
  CHECK(call("GET", "/nope", "").status().code() == StatusCode::kFailedPrecondition);
  util::TerminateAndReap(child->pid, 0ms);
}

TEST_CASE("cold boot configures Firecracker in the documented order and snapshots a paused VM") {
  World w;
  bool network = CanManageTaps();
  if (!network) MESSAGE("no CAP_NET_ADMIN: the network part of this test is skipped");
  auto spec = w.Spec("vm", network);
  auto vmm = MakeFirecrackerVmm(w.opts);
  auto vm = vmm->ColdBoot(spec);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  REQUIRE(w.pids.size() == 1);
  CHECK((*vm)->pid() == w.pids[0]);
  CHECK((*vm)->IsAlive());
  CHECK((*vm)->console_log() == (fs::path(spec.work_dir) / "console.log").string());
  if (network) CHECK(fs::exists("/sys/class/net/" + w.Tap(spec)));

  auto log = ReadLog(w.log);
  std::vector<std::string> order;
  for (const auto& r : log) order.push_back(r.method + " " + r.path);
  std::vector<std::string> want{"PUT /logger", "PUT /metrics", "PUT /boot-source", "PUT /machine-config",
                                "PUT /drives/rootfs"};
  if (network) want.push_back("PUT /network-interfaces/eth0");
  want.insert(want.end(), {"PUT /vsock", "PUT /entropy", "PUT /actions"});
  CHECK(order == want);
  w.ExpectAllAccepted();
  const auto* boot = Find(log, "PUT", "/boot-source");
  REQUIRE(boot);
  CHECK(std::string(boot->body.at("boot_args").as_string()) == "console=ttyS0 reboot=k panic=1 pci=off");
  const auto* drive = Find(log, "PUT", "/drives/rootfs");
  REQUIRE(drive);
  // Relative path: resolves in the VM's own directory (the per-VM layout clones rely on).
  CHECK(drive->body.at("path_on_host").as_string() == "rootfs.ext4");
  CHECK(fs::exists(fs::path(spec.work_dir) / "rootfs.ext4"));
  CHECK(Find(log, "PUT", "/vsock")->body.at("uds_path").as_string() == "v.sock");

  // The guest channel goes through the vsock handshake.
  auto ping = (*vm)->guest().Ping(2s);
  REQUIRE_MESSAGE(ping.ok(), ping.status().ToString());
  CHECK(ping->protocol == 1);

  // Snapshot requires a paused VM.
  TempDir snap;
  CHECK((*vm)->Snapshot(snap.str()).code() == StatusCode::kFailedPrecondition);
  REQUIRE((*vm)->Pause().ok());
  auto st = (*vm)->Snapshot(snap.str());
  REQUIRE_MESSAGE(st.ok(), st.ToString());
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(snap.path())) files.insert(e.path().filename().string());
  CHECK(files == std::set<std::string>{"firecracker.json", "rootfs.ext4", "vm.mem", "vm.state"});
  log = ReadLog(w.log);
  const auto* create = Find(log, "PUT", "/snapshot/create");
  REQUIRE(create);
  CHECK(MemberNames(create->body) == "snapshot_type,snapshot_path,mem_file_path");
  CHECK(create->body.at("snapshot_type").as_string() == "Full");
  CHECK((*vm)->Resume().ok());
  w.ExpectAllAccepted();

  CHECK((*vm)->Stop(1s).ok());
  CHECK((*vm)->pid() == -1);
  CHECK_FALSE((*vm)->IsAlive());
  CHECK((*vm)->Stop(1s).ok());  // idempotent
  w.ExpectNothingLeaked(spec);
}

TEST_CASE("restore gates snapshot/load fields on the Firecracker version") {
  struct Case {
    std::string version;
    bool overrides, track_dirty, vsock_override;
  };
  for (const Case& c : {Case{"1.7.0", false, false, false}, Case{"1.12.0", true, false, false},
                        Case{"1.14.2", true, true, false}, Case{"1.16.0", true, true, true}}) {
    for (bool diff : {false, true}) {
      CAPTURE(c.version);
      CAPTURE(diff);
      World w(c.version);
      if (diff) w.opts.snapshot_type = FirecrackerSnapshotType::kDiff;
      bool network = CanManageTaps();
      TempDir snap;
      BuildSnapshot(w, snap.path(), network);
      if (diff) {
        auto log = ReadLog(w.log);
        CHECK(Find(log, "PUT", "/machine-config")->body.at("track_dirty_pages").as_bool());
        CHECK(Find(log, "PUT", "/snapshot/create")->body.at("snapshot_type").as_string() == "Diff");
      }
      fs::remove(w.log);

      auto spec = w.Spec("clone", network);
      auto clone = MakeFirecrackerVmm(w.opts)->Restore(spec, snap.str());
      REQUIRE_MESSAGE(clone.ok(), clone.status().ToString());
      auto log = ReadLog(w.log);
      std::vector<std::string> order;
      for (const auto& r : log) order.push_back(r.method + " " + r.path);
      // A fresh process: only logger and metrics precede the load.
      CHECK(order == std::vector<std::string>{"PUT /logger", "PUT /metrics", "PUT /snapshot/load"});
      w.ExpectAllAccepted();
      const auto& load = Find(log, "PUT", "/snapshot/load")->body.as_object();
      CHECK(load.at("resume_vm").as_bool());
      REQUIRE(load.contains("mem_backend"));
      CHECK(load.at("mem_backend").at("backend_type").as_string() == "File");
      CHECK(std::string(load.at("mem_backend").at("backend_path").as_string()) ==
            (snap.path() / "vm.mem").string());
      CHECK_FALSE(load.contains("mem_file_path"));
      if (network) {
        CHECK(load.contains("network_overrides") == c.overrides);
        if (c.overrides) {
          CHECK(json::serialize(load.at("network_overrides")) ==
                R"([{"iface_id":"eth0","host_dev_name":")" + w.Tap(spec) + R"("}])");
          CHECK(fs::exists("/sys/class/net/" + w.Tap(spec)));
        } else {
          // < 1.12: the recorded TAP name inside the clone's own network namespace.
          CHECK(NetnsExists(w.opts.netns_prefix + spec.vm_id));
        }
      }
      CHECK(load.contains("track_dirty_pages") == (diff && c.track_dirty));
      CHECK(load.contains("enable_diff_snapshots") == (diff && !c.track_dirty));
      CHECK(load.contains("vsock_override") == c.vsock_override);
      if (c.vsock_override) {
        CHECK(std::string(load.at("vsock_override").at("uds_path").as_string()) ==
              (fs::path(spec.work_dir) / "v.sock").string());
      }
      // The clone has its own disk copy and answers on its own vsock socket.
      CHECK(fs::exists(fs::path(spec.work_dir) / "rootfs.ext4"));
      auto ping = (*clone)->guest().Ping(2s);
      CHECK_MESSAGE(ping.ok(), ping.status().ToString());
      CHECK((*clone)->Stop(1s).ok());
      w.ExpectNothingLeaked(spec);
    }
  }
}

TEST_CASE("two clones of one snapshot run side by side with their own disk, vsock and TAP") {
  World w;
  bool network = CanManageTaps();
  TempDir snap;
  // Like the core's build VMs: no network identity. The backend still gives the build VM a NIC (on an
  // isolated TAP in a private namespace) so that clones have an eth0 to attach their own TAP to.
  BuildSnapshot(w, snap.path(), false);
  if (network) {
    auto log = ReadLog(w.log);
    const auto* nic = Find(log, "PUT", "/network-interfaces/eth0");
    REQUIRE(nic);
    CHECK(nic->body.at("host_dev_name").as_string() == "tap0");
    CHECK_FALSE(nic->body.as_object().contains("guest_mac"));
  }
  fs::remove(w.log);
  auto vmm = MakeFirecrackerVmm(w.opts);
  auto s1 = w.Spec("c1", network), s2 = w.Spec("c2", network);
  auto a = vmm->Restore(s1, snap.str());
  auto b = vmm->Restore(s2, snap.str());
  REQUIRE_MESSAGE(a.ok(), a.status().ToString());
  REQUIRE_MESSAGE(b.ok(), b.status().ToString());
  CHECK((*a)->pid() != (*b)->pid());
  if (network) {
    CHECK(fs::exists("/sys/class/net/" + w.Tap(s1)));
    CHECK(fs::exists("/sys/class/net/" + w.Tap(s2)));
    int overrides = 0;
    for (const auto& r : ReadLog(w.log)) {
      if (r.path == "/snapshot/load") {
        CHECK(r.body.at("network_overrides").at(0).at("iface_id").as_string() == "eth0");
        ++overrides;
      }
    }
    CHECK(overrides == 2);
  }
  auto pa = (*a)->guest().Ping(2s);
  auto pb = (*b)->guest().Ping(2s);
  REQUIRE(pa.ok());
  REQUIRE(pb.ok());
  CHECK(pa->boot_id == pb->boot_id);  // both are the same restored guest
  IdentityRequest id;
  id.hostname = "clone-a";
  id.entropy = "0123456789";
  auto ir = (*a)->guest().SetIdentity(id, 2s);
  REQUIRE_MESSAGE(ir.ok(), ir.status().ToString());
  CHECK(ir->hostname == "clone-a");
  CHECK((*b)->guest().Ping(2s)->hostname != "clone-a");
  CHECK((*a)->guest().RuntimeReady(RuntimeCheck{}, 2s)->ready);
  w.ExpectAllAccepted();
  CHECK((*a)->Stop(1s).ok());
  CHECK((*b)->guest().Ping(2s).ok());  // stopping one clone does not touch the other
  a->reset();
  b->reset();  // the destructor stops too
  w.ExpectNothingLeaked(s1);
  w.ExpectNothingLeaked(s2);
  // The snapshot directory is never modified.
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(snap.path())) files.insert(e.path().filename().string());
  CHECK(files == std::set<std::string>{"firecracker.json", "rootfs.ext4", "vm.mem", "vm.state"});
}

TEST_CASE("failure: the API socket never appears") {
  World w;
  w.env.Set("FCWARM_FAKE_FC_NO_SOCKET", "1");
  w.opts.socket_wait = 300ms;
  bool network = CanManageTaps();
  auto spec = w.Spec("vm", network);
  auto vm = MakeFirecrackerVmm(w.opts)->ColdBoot(spec);
  REQUIRE_FALSE(vm.ok());
  CHECK(vm.status().code() == StatusCode::kDeadlineExceeded);
  CHECK(vm.status().message().find("did not appear within 300 ms") != std::string::npos);
  CHECK(w.pids.size() == 1);
  w.ExpectNothingLeaked(spec);
}

TEST_CASE("failure: the process exits before its socket appears") {
  World w;
  w.env.Set("FCWARM_FAKE_FC_EXIT_AT_START", "7");
  auto spec = w.Spec("vm", CanManageTaps());
  auto vm = MakeFirecrackerVmm(w.opts)->ColdBoot(spec);
  REQUIRE_FALSE(vm.ok());
  CHECK(vm.status().code() == StatusCode::kUnavailable);
  CHECK(vm.status().message().find("exited (exit code 7)") != std::string::npos);
  CHECK(vm.status().message().find("exiting at start as asked") != std::string::npos);  // log tail
  w.ExpectNothingLeaked(spec);
}

TEST_CASE("failure: the process dies in the middle of a call") {
  for (const char* at : {"PUT /machine-config", "PUT /actions"}) {
    CAPTURE(at);
    World w;
    w.env.Set("FCWARM_FAKE_FC_DIE_ON", at);
    auto spec = w.Spec("vm", CanManageTaps());
    auto vm = MakeFirecrackerVmm(w.opts)->ColdBoot(spec);
    REQUIRE_FALSE(vm.ok());
    CHECK(vm.status().code() == StatusCode::kUnavailable);
    CHECK(vm.status().message().find(at) != std::string::npos);
    CHECK(vm.status().message().find("firecracker exited (exit code 3)") != std::string::npos);
    w.ExpectNothingLeaked(spec);
  }
  // During a restore's load.
  World w;
  bool network = CanManageTaps();
  TempDir snap;
  BuildSnapshot(w, snap.path(), network);
  w.env.Set("FCWARM_FAKE_FC_DIE_ON", "PUT /snapshot/load");
  auto spec = w.Spec("clone", network);
  auto clone = MakeFirecrackerVmm(w.opts)->Restore(spec, snap.str());
  REQUIRE_FALSE(clone.ok());
  CHECK(clone.status().message().find("firecracker restore: PUT /snapshot/load") == 0);
  CHECK(clone.status().message().find("exited") != std::string::npos);
  w.ExpectNothingLeaked(spec);
  CHECK_FALSE(fs::exists(fs::path(spec.work_dir) / "rootfs.ext4"));  // the disk copy is removed too
}

TEST_CASE("failure: a 400 from the API becomes the Status message") {
  World w;
  w.env.Set("FCWARM_FAKE_FC_FAIL_ON", "PUT /boot-source");
  auto spec = w.Spec("vm", CanManageTaps());
  auto vm = MakeFirecrackerVmm(w.opts)->ColdBoot(spec);
  REQUIRE_FALSE(vm.ok());
  CHECK(vm.status().code() == StatusCode::kFailedPrecondition);
  CHECK(vm.status().message() ==
        "firecracker cold boot: PUT /boot-source: Firecracker answered HTTP 400: injected failure for PUT "
        "/boot-source");
  w.ExpectNothingLeaked(spec);

  // A missing kernel is caught before any process starts.
  World w2;
  w2.image.kernel_path = "/nonexistent/vmlinux";
  auto spec2 = w2.Spec("vm", false);
  auto vm2 = MakeFirecrackerVmm(w2.opts)->ColdBoot(spec2);
  CHECK(vm2.status().code() == StatusCode::kInvalidArgument);
  CHECK(w2.pids.empty());
}

TEST_CASE("failure: a snapshot from another Firecracker version") {
  World w("1.12.0");
  bool network = CanManageTaps();
  TempDir snap;
  BuildSnapshot(w, snap.path(), network);

  // The sidecar says which version wrote it: refused before any process starts.
  World w2("1.14.2");
  auto spec = w2.Spec("clone", network);
  auto clone = MakeFirecrackerVmm(w2.opts)->Restore(spec, snap.str());
  REQUIRE_FALSE(clone.ok());
  CHECK(clone.status().code() == StatusCode::kFailedPrecondition);
  CHECK(clone.status().message().find("written by Firecracker 1.12.0 (snapshot format v6.0.0)") !=
        std::string::npos);
  CHECK(clone.status().message().find("this host runs Firecracker 1.14.2 (snapshot format v8.0.0)") !=
        std::string::npos);
  CHECK(w2.pids.empty());
  w2.ExpectNothingLeaked(spec);

  // A state file whose format differs from what its sidecar claims: Firecracker itself refuses the load and
  // exits; the Status carries its fault message.
  World w3("1.12.0");
  w3.env.Set("FCWARM_FAKE_FC_SNAPSHOT_VERSION", "v6.0.0");
  w3.env.Set("FCWARM_FAKE_FC_VERSION", "1.12.1");
  // Same format string per the sidecar, but the double now expects a different one for the file:
  {
    std::ifstream in(snap.path() / "vm.state");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto v = json::parse(text).as_object();
    v["snapshot_version"] = "v5.0.0";
    std::ofstream(snap.path() / "vm.state", std::ios::trunc) << json::serialize(v);
  }
  auto spec3 = w3.Spec("clone3", network);
  auto clone3 = MakeFirecrackerVmm(w3.opts)->Restore(spec3, snap.str());
  REQUIRE_FALSE(clone3.ok());
  CHECK(clone3.status().message().find("Snapshot version mismatch: the file has v5.0.0") !=
        std::string::npos);
  CHECK(clone3.status().message().find("firecracker exited") != std::string::npos);
  CHECK(w3.pids.size() == 1);
  w3.ExpectNothingLeaked(spec3);

  // Not a Firecracker snapshot at all.
  TempDir empty;
  auto clone4 = MakeFirecrackerVmm(w3.opts)->Restore(w3.Spec("clone4", false), empty.str());
  CHECK(clone4.status().code() == StatusCode::kFailedPrecondition);
  CHECK(clone4.status().message().find("firecracker.json") != std::string::npos);
}

TEST_CASE("vsock handshake") {
  World w;
  auto spec = w.Spec("vm", false);
  auto vm = MakeFirecrackerVmm(w.opts)->ColdBoot(spec);
  REQUIRE(vm.ok());
  std::string uds = (fs::path(spec.work_dir) / "v.sock").string();
  auto fd = firecracker::ConnectVsock(uds, 52, 1s);
  REQUIRE_MESSAGE(fd.ok(), fd.status().ToString());
  ::close(*fd);
  auto other = firecracker::ConnectVsock(uds, 53, 1s);
  CHECK(other.status().code() == StatusCode::kUnavailable);
  CHECK(other.status().message().find("closed the connection after CONNECT") != std::string::npos);
  // A paused guest does not answer: the channel reports it instead of hanging.
  REQUIRE((*vm)->Pause().ok());
  CHECK_FALSE((*vm)->guest().Ping(500ms).ok());
  CHECK(firecracker::ConnectVsock("/nonexistent/v.sock", 52, 200ms).status().code() ==
        StatusCode::kUnavailable);
  CHECK((*vm)->Stop(1s).ok());
}

TEST_CASE("the Uffd backend needs a handler") {
  World w;
  TempDir snap;
  BuildSnapshot(w, snap.path(), false);
  w.opts.mem_backend = FirecrackerMemBackend::kUffd;
  auto spec = w.Spec("clone", false);
  auto clone = MakeFirecrackerVmm(w.opts)->Restore(spec, snap.str());
  CHECK(clone.status().code() == StatusCode::kFailedPrecondition);
  CHECK(clone.status().message().find("uffd_handler") != std::string::npos);
}

}  // namespace fcwarm

namespace fcwarm {

TEST_CASE("jailer mode: chroot layout, uid/gid, snapshot files moved out of and linked into the jail") {
  if (::geteuid() != 0 || !FCWARM_FAKE_FC_STATIC) {
    MESSAGE("skipped: needs root (chroot) and a statically linked fake firecracker");
    return;
  }
  World w;
  TempDir jails;
  w.opts.jailer.binary = FCWARM_FAKE_JAILER_PATH;
  w.opts.jailer.uid = 65534;
  w.opts.jailer.gid = 65534;
  w.opts.jailer.chroot_base = jails.str();
  w.opts.jailer.cgroups = {"cpu.weight=100"};
  bool network = CanManageTaps();
  auto vmm = MakeFirecrackerVmm(w.opts);
  auto spec = w.Spec("build", network);
  auto vm = vmm->ColdBoot(spec);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  fs::path root = jails.path() / "firecracker" / spec.vm_id / "root";
  CHECK(fs::exists(root / "api.sock"));
  CHECK(fs::exists(root / "vmlinux"));
  CHECK(fs::exists(root / "rootfs.ext4"));
  struct stat st {};
  REQUIRE(::stat((root / "rootfs.ext4").c_str(), &st) == 0);
  CHECK(st.st_uid == 65534u);
  REQUIRE((*vm)->guest().Ping(2s).ok());
  REQUIRE((*vm)->Pause().ok());
  TempDir snap;
  auto s = (*vm)->Snapshot(snap.str());
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(snap.path())) files.insert(e.path().filename().string());
  CHECK(files == std::set<std::string>{"firecracker.json", "rootfs.ext4", "vm.mem", "vm.state"});
  CHECK((*vm)->Stop(1s).ok());
  CHECK_FALSE(fs::exists(jails.path() / "firecracker" / spec.vm_id));
  w.ExpectNothingLeaked(spec);

  auto cspec = w.Spec("clone", network);
  auto clone = vmm->Restore(cspec, snap.str());
  REQUIRE_MESSAGE(clone.ok(), clone.status().ToString());
  fs::path croot = jails.path() / "firecracker" / cspec.vm_id / "root";
  CHECK(fs::exists(croot / "v.sock"));
  CHECK(fs::exists(croot / "rootfs.ext4"));
  auto ping = (*clone)->guest().Ping(2s);
  CHECK_MESSAGE(ping.ok(), ping.status().ToString());
  CHECK((*clone)->Stop(1s).ok());
  CHECK_FALSE(fs::exists(jails.path() / "firecracker" / cspec.vm_id));
  w.ExpectNothingLeaked(cspec);

  // A snapshot written without the jailer is refused in jailer mode (its paths would not resolve).
  World plain;
  TempDir psnap;
  BuildSnapshot(plain, psnap.path(), false);
  auto refused = vmm->Restore(w.Spec("clone2", false), psnap.str());
  CHECK(refused.status().code() == StatusCode::kFailedPrecondition);
  CHECK(refused.status().message().find("jailer") != std::string::npos);
}

namespace {

// Network settings of a VM with an egress policy and one published port (127.0.0.1, a free host port).
void WithHostRules(LaunchSpec& spec) {
  spec.network.egress = "none";
  spec.network.dns = {"192.0.2.53"};
  spec.network.egress_allow = {"192.0.2.80/32"};
  spec.network.egress_deny = {"10.250.0.0/16"};
  auto ports = net::ParsePorts({"127.0.0.1::80/tcp"});
  REQUIRE(ports.ok());
  REQUIRE(net::AssignHostPorts(&*ports, {}).ok());
  spec.network.ports = {ports->at(0).ToString()};
}

std::string GuestIp(const LaunchSpec& s) { return s.network.ip_cidr.substr(0, s.network.ip_cidr.find('/')); }

// The VM's egress and port rules are in the host's rule set, on its TAP.
void ExpectRulesOnTap(World& w, const LaunchSpec& spec) {
  std::string rules = SavedVmRules(spec.vm_id);
  CAPTURE(rules);
  std::string tap = w.Tap(spec);
  CHECK(rules.find("fcwarm:vm:" + spec.vm_id + ":egress:") != std::string::npos);
  CHECK(rules.find("fcwarm:vm:" + spec.vm_id + ":ports:") != std::string::npos);
  CHECK(rules.find("-i " + tap + " ") != std::string::npos);
  CHECK(rules.find("-o " + tap + " ") != std::string::npos);
  CHECK(rules.find("-d 192.0.2.53/32") != std::string::npos);  // DNS to the resolver
  CHECK(rules.find("-d 192.0.2.80/32") != std::string::npos);  // the allowed mirror, under egress none
  CHECK(rules.find("-d 10.250.0.0/16") != std::string::npos);  // the address pool: never
  CHECK(rules.find("-s " + GuestIp(spec) + "/32") != std::string::npos);  // anti-spoofing, MASQUERADE
  std::string port = spec.network.ports.at(0);                            // 127.0.0.1:<host port>:80/tcp
  std::string host_port = port.substr(10, port.find(':', 10) - 10);
  CHECK(rules.find("--dport " + host_port + " ") != std::string::npos);
  CHECK(rules.find("--to-destination " + GuestIp(spec) + ":80") != std::string::npos);
  // 127.0.0.1 is served: route_localnet on the TAP (never host-wide); forwarding is on.
  auto localnet = net::GetSysctl("net/ipv4/conf/" + tap + "/route_localnet");
  CHECK((localnet.ok() && *localnet == "1"));
  auto forward = net::GetSysctl("net/ipv4/ip_forward");
  CHECK((forward.ok() && *forward == "1"));
}

}  // namespace

TEST_CASE("host rules: egress and published ports on the TAP of a VM with a network identity") {
  if (!CanManageRules()) {
    MESSAGE("skipped: needs root, iptables and TAP devices");
    return;
  }
  HostRulesGuard guard;
  // One case on purpose: its guard restores ip_forward, which concurrent cases of this binary would race on.

  // A build VM (no identity, isolated TAP in its own namespace) gets no rules, even with settings given.
  World w;
  auto vmm = MakeFirecrackerVmm(w.opts);
  auto build = w.Spec("build", false);
  build.network.egress = "all";
  build.network.dns = {"192.0.2.53"};
  auto bvm = vmm->ColdBoot(build);
  REQUIRE_MESSAGE(bvm.ok(), bvm.status().ToString());
  CHECK(NetnsExists(w.opts.netns_prefix + build.vm_id));
  CHECK(SavedVmRules(build.vm_id).empty());
  REQUIRE((*bvm)->Pause().ok());
  TempDir snap;
  auto snapped = (*bvm)->Snapshot(snap.str());
  REQUIRE_MESSAGE(snapped.ok(), snapped.ToString());
  CHECK((*bvm)->Stop(1s).ok());
  w.ExpectNothingLeaked(build);
  // ... and a port cannot be published on it: refused before anything is created.
  auto nolink = w.Spec("nolink", false);
  nolink.network.ports = {"127.0.0.1:8080:80/tcp"};
  auto refused = vmm->ColdBoot(nolink);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kFailedPrecondition);
  CHECK(refused.status().message().find("ports: vm " + nolink.vm_id + " has no network link") !=
        std::string::npos);
  CHECK(w.pids.size() == 1);  // the build VM's only
  w.ExpectNothingLeaked(nolink);

  {
    // Cold boot: the rules exist while the VM runs and are gone after Stop().
    auto spec = w.Spec("cold", true);
    WithHostRules(spec);
    auto vm = vmm->ColdBoot(spec);
    REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
    ExpectRulesOnTap(w, spec);
    CHECK((*vm)->Stop(1s).ok());
    w.ExpectNothingLeaked(spec);
    CHECK_FALSE(fs::exists("/proc/sys/net/ipv4/conf/" + w.Tap(spec)));
  }
  {
    // Restore (>= 1.12, network_overrides): on the clone's own TAP; destroying the object releases them.
    auto c1 = w.Spec("clone1", true), c2 = w.Spec("clone2", true);
    WithHostRules(c1);
    WithHostRules(c2);
    auto a = vmm->Restore(c1, snap.str());
    auto b = vmm->Restore(c2, snap.str());
    REQUIRE_MESSAGE(a.ok(), a.status().ToString());
    REQUIRE_MESSAGE(b.ok(), b.status().ToString());
    ExpectRulesOnTap(w, c1);
    ExpectRulesOnTap(w, c2);
    a->reset();
    CHECK(SavedVmRules(c1.vm_id).empty());
    CHECK_FALSE(fs::exists("/sys/class/net/" + w.Tap(c1)));
    ExpectRulesOnTap(w, c2);  // the other clone keeps its rules
    b->reset();
    w.ExpectNothingLeaked(c1);
    w.ExpectNothingLeaked(c2);
  }
  {
    // A start that fails after the rules were applied releases them (and the TAP).
    w.env.Set("FCWARM_FAKE_FC_DIE_ON", "PUT /actions");
    auto spec = w.Spec("dies", true);
    WithHostRules(spec);
    auto vm = vmm->ColdBoot(spec);
    REQUIRE_FALSE(vm.ok());
    CHECK(vm.status().message().find("PUT /actions") != std::string::npos);
    w.ExpectNothingLeaked(spec);
    w.env.Unset("FCWARM_FAKE_FC_DIE_ON");
  }
  {
    // Before 1.12 a clone's TAP lives in a namespace of its own, with no link to the root namespace: nothing
    // is forwarded for it, so no egress rule is applied (and none could name its TAP in the root namespace);
    // a published port is refused before anything is created.
    World old("1.7.0");
    auto ovmm = MakeFirecrackerVmm(old.opts);
    TempDir osnap;
    BuildSnapshot(old, osnap.path(), false);
    auto spec = old.Spec("clone", true);
    spec.network.egress = "all";
    auto clone = ovmm->Restore(spec, osnap.str());
    REQUIRE_MESSAGE(clone.ok(), clone.status().ToString());
    CHECK(NetnsExists(old.opts.netns_prefix + spec.vm_id));
    CHECK(SavedVmRules(spec.vm_id).empty());
    CHECK((*clone)->Stop(1s).ok());
    old.ExpectNothingLeaked(spec);
    auto pspec = old.Spec("ports", true);
    WithHostRules(pspec);
    size_t started = old.pids.size();
    auto no = ovmm->Restore(pspec, osnap.str());
    REQUIRE_FALSE(no.ok());
    CHECK(no.status().code() == StatusCode::kFailedPrecondition);
    CHECK(no.status().message().find("has no network link") != std::string::npos);
    CHECK(old.pids.size() == started);
    old.ExpectNothingLeaked(pspec);
  }
  w.ExpectAllAccepted();
}


// Live restore (docs/operations.md, "Restarts and live restore"): a VM started to outlive its owner is left
// running by Detach() (process, TAP, rules untouched) and taken over by another backend instance, as the next
// server process would: Adopt() checks the process and asks the API for its state (GET /), re-applies the host
// rules, and the adopted VM stops like any other. A wrong or dead process is refused without side effects.
TEST_CASE("live restore: a detached VM is adopted by a new backend, a wrong or dead process is refused") {
  const bool rules = CanManageRules();
  if (!rules) MESSAGE("no root/iptables: the network and rules part of this test is skipped");
  std::optional<HostRulesGuard> guard;
  if (rules) guard.emplace();
  World w;
  auto spec = w.Spec("vm", rules);
  spec.outlive_owner = true;
  if (rules) spec.network.ports = {"127.0.0.1:18999:80/tcp"};
  auto first = MakeFirecrackerVmm(w.opts);
  auto vm = first->ColdBoot(spec);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  REQUIRE(w.pids.size() == 1);
  const int pid = w.pids[0];
  const auto started = util::ProcessStartTime(pid);
  REQUIRE(started);
  const std::string rules_before = rules ? SavedVmRules(spec.vm_id) : "";
  CHECK((*vm)->Detach().ok());
  vm->reset();  // destroying a detached VM stops nothing
  CHECK(Alive(pid));
  if (rules) {
    CHECK(fs::exists("/sys/class/net/" + w.Tap(spec)));
    CHECK(SavedVmRules(spec.vm_id) == rules_before);
  }

  // A process that is not this VM's Firecracker, and a recorded start time that does not match: refused.
  auto second = MakeFirecrackerVmm(w.opts);
  auto wrong = second->Adopt(spec, AdoptTarget{static_cast<int>(::getpid()), *util::ProcessStartTime(::getpid())});
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.status().code() == StatusCode::kFailedPrecondition);
  CHECK_MESSAGE(wrong.status().message().find("is not the Firecracker of vm") != std::string::npos,
                wrong.status().ToString());
  auto reused = second->Adopt(spec, AdoptTarget{pid, *started + 1});
  REQUIRE_FALSE(reused.ok());
  CHECK_MESSAGE(reused.status().message().find("pid was reused") != std::string::npos, reused.status().ToString());
  CHECK(Alive(pid));

  // The real one: adopted, answering, its rules in place once (applied again, not doubled).
  auto adopted = second->Adopt(spec, AdoptTarget{pid, *started});
  REQUIRE_MESSAGE(adopted.ok(), adopted.status().ToString());
  CHECK((*adopted)->pid() == pid);
  CHECK((*adopted)->IsAlive());
  CHECK((*adopted)->guest().Ping(2s).ok());
  auto log = ReadLog(w.log);
  REQUIRE_FALSE(log.empty());
  CHECK(log.back().method == "GET");
  CHECK(log.back().path == "/");
  if (rules) {
    auto after = SavedVmRules(spec.vm_id);
    CHECK_FALSE(after.empty());
    CHECK(std::count(after.begin(), after.end(), '\n') == std::count(rules_before.begin(), rules_before.end(), '\n'));
  }
  CHECK((*adopted)->Stop(1s).ok());
  util::WaitFor(pid, 1s);  // the fake is this test's child: reap it (a server's adopted VMM is not its child)
  CHECK_FALSE(Alive(pid));
  w.ExpectNothingLeaked(spec);

  // Gone now: refused.
  auto dead = second->Adopt(spec, AdoptTarget{pid, *started});
  REQUIRE_FALSE(dead.ok());
  CHECK(dead.status().code() == StatusCode::kFailedPrecondition);
}

}  // namespace fcwarm
