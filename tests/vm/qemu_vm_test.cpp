// Real-QEMU tests of the QEMU backend (label `vm`): cold boot, snapshot, concurrent clones, failure paths.
// Needs qemu-system-x86_64 and the guest artifacts (FCWARM_GUEST_DIR, default
// /var/cache/fcwarm/guest/current, built by guest/build-artifacts.sh); prints "SKIP: <reason>" and passes
// otherwise. Networking checks need root.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fcwarm/qemu_vmm.hpp"
#include "net/netns.hpp"
#include "util/process.hpp"
#include "vm/vm_support.hpp"

namespace fs = std::filesystem;
using namespace fcwarm;
using namespace fcwarm::vmtest;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

bool IsRoot() { return ::geteuid() == 0; }

size_t OpenFds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::string RandomHex(size_t n) {
  static std::mt19937_64 rng(std::random_device{}());
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(hex[rng() & 15]);
  return s;
}

std::string RandomBytes(size_t n) {
  std::ifstream f("/dev/urandom", std::ios::binary);
  std::string s(n, '\0');
  f.read(s.data(), static_cast<std::streamsize>(n));
  return s;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::path("/tmp") / ("fcwq-" + RandomHex(8));
    fs::create_directories(path);
  }
  ~TempDir() {
    if (std::getenv("FCWARM_TEST_KEEP")) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string sub(const std::string& name) const {
    auto p = path / name;
    fs::create_directories(p);
    return p.string();
  }
};

RuntimeImage Image(uint32_t memory_mib = 512) {
  RuntimeImage img;
  img.id = "img-" + RandomHex(8);
  img.name = "qemu-test";
  img.backend = "qemu";
  img.kernel_path = (fs::path(GuestDir()) / "bzImage").string();
  img.initrd_path = (fs::path(GuestDir()) / "initramfs.cpio.gz").string();
  img.rootfs_path = (fs::path(GuestDir()) / "disk.ext4").string();
  img.shape.memory_mib = memory_mib;
  return img;
}

// Pings until the agent answers or `budget` runs out.
Result<GuestInfo> WaitForAgent(Vm& vm, std::chrono::milliseconds budget) {
  auto deadline = Clock::now() + budget;
  Status last = Status::Unavailable("no attempt");
  while (Clock::now() < deadline) {
    auto r = vm.guest().Ping(1000ms);
    if (r.ok()) return r;
    last = r.status();
    if (!vm.IsAlive()) return last;
    std::this_thread::sleep_for(10ms);
  }
  return last;
}

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

bool PidGone(int pid) { return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH; }

// Asserts that nothing of the VM with this id is left on the host.
void CheckNoLeak(const std::string& vm_id, const std::string& work_dir, int pid, const QemuOptions& o) {
  if (pid > 0) CHECK_MESSAGE(PidGone(pid), "QEMU pid " << pid << " still exists");
  net::NetnsPlan names;
  REQUIRE(net::NamesForVm(vm_id, o.netns_prefix, o.veth_prefix, &names).ok());
  CHECK_MESSAGE(!net::NetnsExists(names.netns), "netns " << names.netns << " leaked");
  CHECK_MESSAGE(!net::InterfaceExists(names.host_veth), "veth " << names.host_veth << " leaked");
  for (const char* f : {"disk.qcow2", "qmp.sock", "agent.sock", "memory.ram"}) {
    CHECK_MESSAGE(!fs::exists(fs::path(work_dir) / f), std::string(f) << " leaked in " << work_dir);
  }
}

// Builds a snapshot of a freshly booted VM into `snap_dir`.
void BuildSnapshot(Vmm& vmm, const TempDir& root, const std::string& snap_dir, const QemuOptions& o,
                   uint32_t memory_mib = 512) {
  LaunchSpec spec;
  spec.vm_id = "build-" + RandomHex(12);
  spec.image = Image(memory_mib);
  spec.work_dir = root.sub(spec.vm_id);
  auto t0 = Clock::now();
  auto vm = vmm.ColdBoot(spec);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  auto info = WaitForAgent(**vm, 90s);
  REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  MESSAGE("cold boot to agent ping: " << MsSince(t0) << " ms");
  CHECK(info->protocol == kGuestProtocolVersion);
  REQUIRE((*vm)->guest().Quiesce(10s).ok());
  REQUIRE((*vm)->Pause().ok());
  fs::create_directories(snap_dir);
  auto t1 = Clock::now();
  auto st = (*vm)->Snapshot(snap_dir);
  REQUIRE_MESSAGE(st.ok(), st.ToString());
  MESSAGE("snapshot: " << MsSince(t1) << " ms");
  int pid = (*vm)->pid();
  CHECK((*vm)->Stop(2s).ok());
  CheckNoLeak(spec.vm_id, spec.work_dir, pid, o);
}

struct CloneOutcome {
  std::string error;
  std::string vm_id;
  std::string work_dir;
  std::string ip;
  std::string random;
  std::string hostname;
  int pid = -1;
  double restore_ms = 0;
  double ping_ms = 0;
  std::unique_ptr<Vm> vm;
};

NetworkIdentity Identity(int i) {
  NetworkIdentity n;
  n.index = 900 + i;
  int block = 4 * (200 + i);  // 10.213.3.32/30 ... far from what the core allocates first
  int a = block / 256, b = block % 256;
  std::string net = "10.213." + std::to_string(a) + ".";
  n.ip_cidr = net + std::to_string(b + 2) + "/30";
  n.gateway = net + std::to_string(b + 1);
  char mac[32];
  std::snprintf(mac, sizeof(mac), "02:fc:00:00:%02x:%02x", (n.index >> 8) & 0xff, n.index & 0xff);
  n.mac = mac;
  n.hostname = "clone-" + std::to_string(i);
  return n;
}

}  // namespace

TEST_CASE("qemu: cold boot, snapshot, and four concurrent clones that are unique and isolated") {
  SKIP_UNLESS_READY();
  QemuOptions o;
  if (!IsRoot()) o.network_mode = QemuNetworkMode::kNone;
  auto vmm = MakeQemuVmm(o);
  CHECK(vmm->Kind() == "qemu");
  auto compat = vmm->HostCompatibility();
  REQUIRE_MESSAGE(compat.ok(), compat.status().ToString());
  CHECK(compat->at("vmm.accel") == "tcg");
  for (const auto& [name, value] : *compat) CHECK_MESSAGE(name.rfind("vmm.", 0) == 0, name);

  TempDir root;
  const size_t fds_before = OpenFds();
  const std::string snap = (root.path / "snap").string();
  BuildSnapshot(*vmm, root, snap, o);
  for (const char* f : {"qemu.json", "state.bin", "disk.qcow2", "memory.ram"}) {
    CHECK_MESSAGE(fs::exists(fs::path(snap) / f), f);
  }
  const auto ram = fs::path(snap) / "memory.ram";
  const auto ram_mtime = fs::last_write_time(ram);
  const auto state_mtime = fs::last_write_time(fs::path(snap) / "state.bin");

  constexpr int kClones = 4;
  std::vector<std::future<CloneOutcome>> futures;
  for (int i = 0; i < kClones; ++i) {
    futures.push_back(std::async(std::launch::async, [&, i] {
      CloneOutcome out;
      LaunchSpec spec;
      spec.vm_id = "clone-" + std::to_string(i) + "-" + RandomHex(8);
      spec.image = Image();
      spec.work_dir = root.sub(spec.vm_id);
      if (o.network_mode == QemuNetworkMode::kNetns) spec.network = Identity(i);
      out.vm_id = spec.vm_id;
      out.work_dir = spec.work_dir;
      auto t0 = Clock::now();
      auto vm = vmm->Restore(spec, snap);
      if (!vm.ok()) {
        out.error = vm.status().ToString();
        return out;
      }
      out.restore_ms = MsSince(t0);
      out.vm = std::move(*vm);
      out.pid = out.vm->pid();
      auto info = WaitForAgent(*out.vm, 30s);
      if (!info.ok()) {
        out.error = "ping: " + info.status().ToString();
        return out;
      }
      out.ping_ms = MsSince(t0);
      IdentityRequest req;
      req.hostname = "clone-" + std::to_string(i);
      if (o.network_mode == QemuNetworkMode::kNetns) {
        req.mac = spec.network.mac;
        req.ip_cidr = spec.network.ip_cidr;
        req.gateway = spec.network.gateway;
        out.ip = spec.network.ip_cidr.substr(0, spec.network.ip_cidr.find('/'));
      }
      req.entropy = RandomBytes(64);
      req.wall_clock_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      auto id = out.vm->guest().SetIdentity(req, 10s);
      if (!id.ok()) {
        out.error = "identity: " + id.status().ToString();
        return out;
      }
      auto ping = out.vm->guest().Ping(5s);
      if (!ping.ok()) {
        out.error = "ping after identity: " + ping.status().ToString();
        return out;
      }
      out.hostname = ping->hostname;
      ExecRequest ex;
      ex.argv = {"head", "-c", "32", "/dev/urandom"};
      auto r = out.vm->guest().Exec(ex, 15s);
      if (!r.ok()) {
        out.error = "exec: " + r.status().ToString();
        return out;
      }
      if (r->exit_code != 0)
        out.error = "head exited " + std::to_string(r->exit_code) + ": " + r->stderr_data;
      out.random = r->stdout_data;
      return out;
    }));
  }
  std::vector<CloneOutcome> clones;
  for (auto& f : futures) clones.push_back(f.get());
  std::set<std::string> randoms, hostnames;
  for (auto& c : clones) {
    CHECK_MESSAGE(c.error.empty(), c.vm_id << ": " << c.error);
    if (!c.error.empty()) continue;
    MESSAGE(c.vm_id << ": restore " << c.restore_ms << " ms, agent ping " << c.ping_ms << " ms");
    CHECK(c.random.size() == 32);
    randoms.insert(c.random);
    hostnames.insert(c.hostname);
  }
  CHECK(randoms.size() == clones.size());
  CHECK(hostnames.size() == clones.size());

  if (o.network_mode == QemuNetworkMode::kNetns) {
    for (auto& c : clones) {
      if (!c.error.empty()) continue;
      bool ok = false;
      for (int attempt = 0; attempt < 5 && !ok; ++attempt) ok = Reachable(c.ip);
      CHECK_MESSAGE(ok, "guest " << c.ip << " of " << c.vm_id << " is not reachable from the host");
    }
  } else {
    MESSAGE("SKIP: network reachability (needs root for network namespaces)");
  }

  // Disk isolation: a file written by clone 0 is not visible in clone 1.
  if (clones.size() >= 2 && clones[0].vm && clones[1].vm) {
    ExecRequest w;
    w.argv = {"/bin/sh", "-c", "echo clone0 > /mnt/data/clone0.txt && sync && cat /mnt/data/clone0.txt"};
    auto wr = clones[0].vm->guest().Exec(w, 15s);
    REQUIRE_MESSAGE(wr.ok(), wr.status().ToString());
    CHECK_MESSAGE(wr->exit_code == 0, wr->stderr_data);
    CHECK(wr->stdout_data == "clone0\n");
    ExecRequest rd;
    rd.argv = {"/bin/sh", "-c",
               "test -e /mnt/data/clone0.txt && echo present || echo absent; "
               "cat /mnt/data/fcwarm-disk-marker"};
    auto rr = clones[1].vm->guest().Exec(rd, 15s);
    REQUIRE_MESSAGE(rr.ok(), rr.status().ToString());
    CHECK(rr->stdout_data.rfind("absent\nfcwarm data disk", 0) == 0);
  }

  for (auto& c : clones) {
    if (c.vm) {
      auto st = c.vm->Stop(2s);
      CHECK_MESSAGE(st.ok(), st.ToString());
      CHECK(c.vm->pid() == -1);
      CHECK(!c.vm->IsAlive());
    }
    CheckNoLeak(c.vm_id, c.work_dir, c.pid, o);
  }
  clones.clear();
  CHECK(OpenFds() == fds_before);
  CHECK(fs::last_write_time(ram) == ram_mtime);
  CHECK(fs::last_write_time(fs::path(snap) / "state.bin") == state_mtime);
}

TEST_CASE("qemu: stream memory mode round trip") {
  SKIP_UNLESS_READY();
  QemuOptions o;
  o.memory_mode = QemuMemoryMode::kStream;
  o.network_mode = QemuNetworkMode::kNone;
  auto vmm = MakeQemuVmm(o);
  TempDir root;
  const std::string snap = (root.path / "snap").string();
  BuildSnapshot(*vmm, root, snap, o, 256);
  CHECK(!fs::exists(fs::path(snap) / "memory.ram"));
  LaunchSpec spec;
  spec.vm_id = "stream-clone-" + RandomHex(8);
  spec.image = Image(256);
  spec.work_dir = root.sub(spec.vm_id);
  auto t0 = Clock::now();
  auto vm = vmm->Restore(spec, snap);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  auto info = WaitForAgent(**vm, 30s);
  REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  MESSAGE("stream restore to agent ping: " << MsSince(t0) << " ms");
  ExecRequest ex;
  ex.argv = {"cat", "/mnt/data/fcwarm-disk-marker"};
  auto r = (*vm)->guest().Exec(ex, 10s);
  REQUIRE(r.ok());
  CHECK(r->stdout_data.rfind("fcwarm data disk", 0) == 0);
  int pid = (*vm)->pid();
  CHECK((*vm)->Stop(2s).ok());
  CheckNoLeak(spec.vm_id, spec.work_dir, pid, o);
}

TEST_CASE("qemu: a restore whose QEMU is killed, or whose state file is corrupt, fails cleanly") {
  SKIP_UNLESS_READY();
  QemuOptions o;
  if (!IsRoot()) o.network_mode = QemuNetworkMode::kNone;
  auto vmm = MakeQemuVmm(o);
  TempDir root;
  const std::string snap = (root.path / "snap").string();
  BuildSnapshot(*vmm, root, snap, o, 256);

  SUBCASE("SIGKILL right after QEMU starts") {
    LaunchSpec spec;
    spec.vm_id = "killed-" + RandomHex(8);
    spec.image = Image(256);
    spec.work_dir = root.sub(spec.vm_id);
    if (o.network_mode == QemuNetworkMode::kNetns) spec.network = Identity(10);
    std::atomic<int> started{-1};
    spec.on_process_started = [&](int pid) {
      started = pid;
      ::kill(pid, SIGKILL);
    };
    auto vm = vmm->Restore(spec, snap);
    REQUIRE(!vm.ok());
    MESSAGE("error: " << vm.status().ToString());
    CHECK(vm.status().message().find("signal 9") != std::string::npos);
    CheckNoLeak(spec.vm_id, spec.work_dir, started.load(), o);
  }

  SUBCASE("SIGKILL while the migration stream loads") {
    LaunchSpec spec;
    spec.vm_id = "killed2-" + RandomHex(8);
    spec.image = Image(256);
    spec.work_dir = root.sub(spec.vm_id);
    if (o.network_mode == QemuNetworkMode::kNetns) spec.network = Identity(11);
    std::atomic<int> started{-1};
    std::atomic<bool> killed_loading{false};
    std::thread killer;
    spec.on_process_started = [&](int pid) {
      started = pid;
      // Kill as soon as QEMU holds the state file (it received it with getfd: the load is starting).
      killer = std::thread([pid, &killed_loading] {
        auto deadline = Clock::now() + 10s;
        const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
        while (Clock::now() < deadline) {
          std::error_code ec;
          for (const auto& e : fs::directory_iterator(fd_dir, ec)) {
            std::error_code ec2;
            auto target = fs::read_symlink(e.path(), ec2);
            if (!ec2 && target.filename() == "state.bin") {
              ::kill(pid, SIGKILL);
              killed_loading = true;
              return;
            }
          }
          if (ec) return;  // the process is gone
        }
      });
    };
    auto vm = vmm->Restore(spec, snap);
    if (killer.joinable()) killer.join();
    if (vm.ok()) {
      // The restore won the race; the clone is then dead and Stop must still clean up.
      MESSAGE("restore finished before the kill (killed while loading: " << killed_loading.load() << ")");
      CHECK((*vm)->Stop(1s).ok());
    } else {
      MESSAGE("error (killed while loading: " << killed_loading.load() << "): " << vm.status().ToString());
      CHECK(vm.status().message().find("signal 9") != std::string::npos);
    }
    CheckNoLeak(spec.vm_id, spec.work_dir, started.load(), o);
  }

  SUBCASE("QEMU of a running clone dies: calls fail fast naming the cause, Stop cleans up") {
    LaunchSpec spec;
    spec.vm_id = "dies-" + RandomHex(8);
    spec.image = Image(256);
    spec.work_dir = root.sub(spec.vm_id);
    if (o.network_mode == QemuNetworkMode::kNetns) spec.network = Identity(13);
    auto vm = vmm->Restore(spec, snap);
    REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
    REQUIRE(WaitForAgent(**vm, 30s).ok());
    int pid = (*vm)->pid();
    std::thread killer([pid] {
      std::this_thread::sleep_for(300ms);
      ::kill(pid, SIGKILL);
    });
    ExecRequest ex;
    ex.argv = {"sleep", "20"};
    ex.timeout = 25s;
    auto t0 = Clock::now();
    auto r = (*vm)->guest().Exec(ex, 30s);
    killer.join();
    REQUIRE(!r.ok());
    MESSAGE("exec error after " << MsSince(t0) << " ms: " << r.status().ToString());
    CHECK(MsSince(t0) < 5000);
    CHECK(r.status().code() == StatusCode::kUnavailable);
    CHECK(r.status().message().find("exited") != std::string::npos);
    auto p = (*vm)->Pause();
    CHECK(p.code() == StatusCode::kUnavailable);
    MESSAGE("pause error: " << p.ToString());
    CHECK(!(*vm)->IsAlive());
    CHECK((*vm)->Stop(1s).ok());
    CheckNoLeak(spec.vm_id, spec.work_dir, pid, o);
  }

  SUBCASE("flipped byte in the state file: refused by the digest check") {
    const auto state = fs::path(snap) / "state.bin";
    const auto copy = root.path / "corrupt";
    fs::create_directories(copy);
    for (const auto& e : fs::directory_iterator(snap)) fs::copy(e.path(), copy / e.path().filename());
    {
      std::fstream f(copy / "state.bin", std::ios::in | std::ios::out | std::ios::binary);
      auto size = fs::file_size(copy / "state.bin");
      f.seekg(static_cast<std::streamoff>(size / 2));
      char c = 0;
      f.read(&c, 1);
      f.seekp(static_cast<std::streamoff>(size / 2));
      c = static_cast<char>(c ^ 0x5a);
      f.write(&c, 1);
    }
    LaunchSpec spec;
    spec.vm_id = "corrupt-" + RandomHex(8);
    spec.image = Image(256);
    spec.work_dir = root.sub(spec.vm_id);
    std::atomic<int> started{-1};
    spec.on_process_started = [&](int pid) { started = pid; };
    auto vm = vmm->Restore(spec, copy.string());
    REQUIRE(!vm.ok());
    MESSAGE("error: " << vm.status().ToString());
    CHECK(vm.status().code() == StatusCode::kFailedPrecondition);
    CHECK(started.load() == -1);  // refused before any process started
    CheckNoLeak(spec.vm_id, spec.work_dir, started.load(), o);
    (void)state;
  }

  SUBCASE("flipped byte in the stream header, digest check off: QEMU refuses it") {
    const auto copy = root.path / "corrupt2";
    fs::create_directories(copy);
    for (const auto& e : fs::directory_iterator(snap)) fs::copy(e.path(), copy / e.path().filename());
    {
      std::fstream f(copy / "state.bin", std::ios::in | std::ios::out | std::ios::binary);
      char c = 0;
      f.read(&c, 1);
      f.seekp(0);
      c = static_cast<char>(c ^ 0xff);
      f.write(&c, 1);
    }
    QemuOptions lax = o;
    lax.verify_state_digest = false;
    auto lax_vmm = MakeQemuVmm(lax);
    LaunchSpec spec;
    spec.vm_id = "corrupt2-" + RandomHex(8);
    spec.image = Image(256);
    spec.work_dir = root.sub(spec.vm_id);
    if (o.network_mode == QemuNetworkMode::kNetns) spec.network = Identity(12);
    std::atomic<int> started{-1};
    spec.on_process_started = [&](int pid) { started = pid; };
    auto t0 = Clock::now();
    auto vm = lax_vmm->Restore(spec, copy.string());
    REQUIRE(!vm.ok());
    MESSAGE("error after " << MsSince(t0) << " ms: " << vm.status().ToString());
    CHECK(started.load() > 0);
    CheckNoLeak(spec.vm_id, spec.work_dir, started.load(), o);
  }
}
