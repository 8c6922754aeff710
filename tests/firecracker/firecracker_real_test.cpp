// Real-binary tier (ctest label `firecracker`): drives an actual Firecracker through the backend.
//
// Runs when FCWARM_FIRECRACKER_BIN names a Firecracker binary, FCWARM_FC_KERNEL an uncompressed ELF guest
// kernel (vmlinux) and /dev/kvm is usable; optional FCWARM_FC_ROOTFS (ext4 image) and FCWARM_FC_INITRD.
// Otherwise it prints why it skipped and passes. Steps, each checked through the API (`GET /` state):
// configure → InstanceStart → pause → snapshot/create → load in a new process (network_overrides on >= 1.12
// when CAP_NET_ADMIN is available) → resume → pause/resume again → destroy, then nothing is left behind.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "backends/firecracker/api_client.hpp"
#include "fcwarm/firecracker_vmm.hpp"
#include "support/test_env.hpp"
#include "util/process.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace fcwarm {
namespace {

std::string EnvOr(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string KvmProblem() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return std::string("/dev/kvm cannot be opened: ") + std::strerror(errno);
  int api = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  ::close(fd);
  if (api != KVM_API_VERSION) return "/dev/kvm answers KVM_GET_API_VERSION with " + std::to_string(api);
  return "";
}

std::string SkipReason() {
  if (EnvOr("FCWARM_FIRECRACKER_BIN").empty()) return "FCWARM_FIRECRACKER_BIN is not set";
  if (EnvOr("FCWARM_FC_KERNEL").empty()) return "FCWARM_FC_KERNEL is not set";
  if (!fs::is_regular_file(EnvOr("FCWARM_FC_KERNEL"))) return "FCWARM_FC_KERNEL is not a file";
  return KvmProblem();
}

bool CanManageTaps() {
  auto r = util::Run({"ip", "tuntap", "add", "dev", "fcrprobe", "mode", "tap"}, 5s);
  bool ok = r.ok() && r->exit_code == 0;
  if (ok) (void)util::Run({"ip", "link", "del", "dev", "fcrprobe"}, 5s);
  return ok;
}

std::string State(const fs::path& work_dir) {
  firecracker::ApiClient api((work_dir / "api.sock").string());
  auto r = api.Call("GET", "/", "", 2s);
  if (!r.ok()) return "error: " + r.status().ToString();
  auto v = json::parse(r->body);
  return std::string(v.at("state").as_string());
}

}  // namespace

TEST_CASE("real firecracker: boot, pause, snapshot, restore in a new process, destroy") {
  std::string why = SkipReason();
  if (!why.empty()) {
    std::cout << "SKIPPED real-binary Firecracker tier: " << why << "\n";
    MESSAGE("skipped: " << why);
    return;
  }
  testing::TempDir dir;
  FirecrackerOptions opts;
  opts.binary = EnvOr("FCWARM_FIRECRACKER_BIN");
  opts.tap_prefix = "fcr";
  opts.netns_prefix = "fcreal-";
  RuntimeImage image;
  image.id = image.name = "real";
  image.backend = "firecracker";
  image.kernel_path = EnvOr("FCWARM_FC_KERNEL");
  image.initrd_path = EnvOr("FCWARM_FC_INITRD");
  image.rootfs_path = EnvOr("FCWARM_FC_ROOTFS");
  image.shape.memory_mib = 128;
  if (image.rootfs_path.empty() && image.initrd_path.empty()) {
    // Without a root filesystem the kernel panics; panic=0 keeps it waiting instead of exiting.
    opts.kernel_boot_args = "console=ttyS0 reboot=k panic=0 pci=off";
  }
  auto vmm = MakeFirecrackerVmm(opts);
  auto compat = vmm->HostCompatibility();
  REQUIRE_MESSAGE(compat.ok(), compat.status().ToString());
  std::cout << "firecracker " << compat->at("vmm.version") << ", snapshot format "
            << compat->at("vmm.snapshot_version") << "\n";
  bool network = CanManageTaps();
  if (!network) std::cout << "no CAP_NET_ADMIN: running without a network interface\n";

  std::vector<int> pids;
  auto spec_for = [&](const std::string& name, int64_t index) {
    LaunchSpec s;
    s.vm_id = "real-" + name + "-" + std::to_string(::getpid());
    s.image = image;
    s.work_dir = (dir.path() / name).string();
    fs::create_directories(s.work_dir);
    if (network && index >= 0) {
      s.network.index = index;
      s.network.mac = "02:fc:00:00:01:0" + std::to_string(index % 10);
      s.network.ip_cidr = "10.251." + std::to_string(index % 250) + ".2/30";
      s.network.gateway = "10.251." + std::to_string(index % 250) + ".1";
    }
    s.on_process_started = [&pids](int pid) { pids.push_back(pid); };
    return s;
  };

  // Like the core's build VMs: no network identity (the backend attaches an isolated NIC so clones have
  // eth0).
  auto build = spec_for("build", -1);
  auto vm = vmm->ColdBoot(build);
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  CHECK(State(build.work_dir) == "Running");
  std::this_thread::sleep_for(500ms);
  REQUIRE_MESSAGE((*vm)->IsAlive(),
                  "firecracker exited after InstanceStart; console: " << (*vm)->console_log());
  REQUIRE((*vm)->Pause().ok());
  CHECK(State(build.work_dir) == "Paused");
  fs::path snap = dir.path() / "snapshot";
  fs::create_directories(snap);
  auto st = (*vm)->Snapshot(snap.string());
  REQUIRE_MESSAGE(st.ok(), st.ToString());
  CHECK(fs::file_size(snap / "vm.mem") == 128u << 20);
  CHECK((*vm)->Stop(2s).ok());
  vm->reset();

  auto clone_spec = spec_for("clone", 9902);
  auto clone = vmm->Restore(clone_spec, snap.string());
  REQUIRE_MESSAGE(clone.ok(), clone.status().ToString());
  CHECK(State(clone_spec.work_dir) == "Running");  // resume_vm
  CHECK((*clone)->IsAlive());
  // A second clone of the same snapshot runs side by side, each with its own disk copy and vsock socket.
  auto clone2_spec = spec_for("clone2", 9903);
  auto clone2 = vmm->Restore(clone2_spec, snap.string());
  REQUIRE_MESSAGE(clone2.ok(), clone2.status().ToString());
  CHECK(State(clone2_spec.work_dir) == "Running");
  for (const auto* s : {&clone_spec, &clone2_spec}) {
    CHECK(fs::exists(fs::path(s->work_dir) / "v.sock"));
    if (!image.rootfs_path.empty()) {
      int pid = (s == &clone_spec ? *clone : *clone2)->pid();
      bool own_disk = false;
      for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
        std::error_code ec;
        if (fs::read_symlink(e.path(), ec) == fs::path(s->work_dir) / "rootfs.ext4") own_disk = true;
      }
      CHECK_MESSAGE(own_disk, "clone " << s->vm_id << " does not have its own disk open");
    }
  }
  CHECK((*clone)->Pause().ok());
  CHECK(State(clone_spec.work_dir) == "Paused");
  CHECK((*clone)->Resume().ok());
  CHECK(State(clone_spec.work_dir) == "Running");
  CHECK((*clone)->Stop(2s).ok());
  clone->reset();
  CHECK((*clone2)->IsAlive());
  CHECK((*clone2)->Stop(2s).ok());
  clone2->reset();

  // A corrupt state file: Firecracker refuses the load and exits; the Status carries its fault message.
  fs::path bad = dir.path() / "bad-snapshot";
  fs::create_directories(bad);
  for (const auto& e : fs::directory_iterator(snap)) fs::copy(e.path(), bad / e.path().filename());
  fs::resize_file(bad / "vm.state", 100);
  auto bad_spec = spec_for("bad", 9904);
  auto failed = vmm->Restore(bad_spec, bad.string());
  REQUIRE_FALSE(failed.ok());
  std::cout << "corrupt snapshot: " << failed.status().ToString() << "\n";
  CHECK(failed.status().message().find("PUT /snapshot/load") != std::string::npos);

  for (int pid : pids)
    CHECK_MESSAGE((::kill(pid, 0) != 0 && errno == ESRCH), "process " << pid << " still runs");
  for (const auto& s : {build, clone_spec, clone2_spec, bad_spec}) {
    CHECK_FALSE(fs::exists(fs::path(s.work_dir) / "api.sock"));
    CHECK_FALSE(fs::exists(fs::path(s.work_dir) / "v.sock"));
    if (s.network.index >= 0) CHECK_FALSE(fs::exists("/sys/class/net/fcr" + std::to_string(s.network.index)));
    CHECK_FALSE(fs::exists("/run/netns/fcreal-" + s.vm_id));
  }
}

}  // namespace fcwarm
