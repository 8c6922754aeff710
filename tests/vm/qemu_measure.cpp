// Measures the QEMU backend's memory modes (docs/qemu-backend.md): snapshot time and size, restore → first
// agent ping latency, and the PSS of 8 concurrent clones. Not a test; run by hand:
//   build-dir/tests/vm/qemu_measure [memory_mib] [sequential_restores] [netns]
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "fcwarm/qemu_vmm.hpp"

namespace fs = std::filesystem;
using namespace fcwarm;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string GuestDir() {
  const char* e = std::getenv("FCWARM_GUEST_DIR");
  return e && *e ? e : "/var/cache/fcwarm/guest/current";
}

double Ms(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

std::string Hex(size_t n) {
  static std::mt19937_64 rng(std::random_device{}());
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back("0123456789abcdef"[rng() & 15]);
  return s;
}

RuntimeImage Image(uint32_t mib) {
  RuntimeImage img;
  img.kernel_path = GuestDir() + "/bzImage";
  img.initrd_path = GuestDir() + "/initramfs.cpio.gz";
  img.rootfs_path = GuestDir() + "/disk.ext4";
  img.shape.memory_mib = mib;
  return img;
}

bool WaitPing(Vm& vm, std::chrono::milliseconds budget) {
  auto deadline = Clock::now() + budget;
  while (Clock::now() < deadline) {
    if (vm.guest().Ping(1000ms).ok()) return true;
    if (!vm.IsAlive()) return false;
  }
  return false;
}

uint64_t PssKb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string key;
  uint64_t value = 0;
  while (f >> key) {
    if (key == "Pss:") {
      f >> value;
      return value;
    }
    f.ignore(1 << 20, '\n');
  }
  return 0;
}

uint64_t AllocatedBytes(const fs::path& dir) {
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    struct stat st {};
    if (::stat(e.path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

LaunchSpec Spec(const fs::path& root, const std::string& prefix, uint32_t mib, bool netns, int index) {
  LaunchSpec s;
  s.vm_id = prefix + "-" + Hex(10);
  s.image = Image(mib);
  s.work_dir = (root / s.vm_id).string();
  fs::create_directories(s.work_dir);
  if (netns) {
    s.network.index = 800 + index;
    int block = 4 * (300 + index);
    std::string net = "10.213." + std::to_string(block / 256) + ".";
    s.network.ip_cidr = net + std::to_string(block % 256 + 2) + "/30";
    s.network.gateway = net + std::to_string(block % 256 + 1);
    char mac[32];
    std::snprintf(mac, sizeof(mac), "02:fc:00:01:%02x:%02x", (index >> 8) & 0xff, index & 0xff);
    s.network.mac = mac;
  }
  return s;
}

int Measure(QemuMemoryMode mode, uint32_t mib, int sequential, bool netns) {
  QemuOptions o;
  o.memory_mode = mode;
  o.network_mode = netns ? QemuNetworkMode::kNetns : QemuNetworkMode::kNone;
  auto vmm = MakeQemuVmm(o);
  fs::path root = fs::path("/tmp") / ("fcwq-measure-" + Hex(6));
  fs::create_directories(root);
  const char* name = mode == QemuMemoryMode::kFile ? "file" : "stream";
  std::printf("== mode %s, %u MiB, network %s\n", name, mib, netns ? "netns" : "none");

  auto build = Spec(root, "build", mib, false, 0);
  auto t0 = Clock::now();
  auto vm = vmm->ColdBoot(build);
  if (!vm.ok() || !WaitPing(**vm, 90s)) {
    std::printf("cold boot failed: %s\n", vm.ok() ? "no ping" : vm.status().ToString().c_str());
    return 1;
  }
  std::printf("cold boot → ping: %.0f ms\n", Ms(t0));
  // Touch some memory so the snapshot is not trivially empty (page cache of the data disk).
  ExecRequest ex;
  ex.argv = {"/bin/sh", "-c",
             "cat /mnt/data/* /sbin/fcwarm-agent > /dev/null; dd if=/dev/urandom of=/tmp/fill bs=1M count=32 "
             "2>/dev/null"};
  (void)(*vm)->guest().Exec(ex, 30s);
  (void)(*vm)->guest().Quiesce(10s);
  (void)(*vm)->Pause();
  fs::path snap = root / "snap";
  fs::create_directories(snap);
  auto t1 = Clock::now();
  auto st = (*vm)->Snapshot(snap.string());
  double snap_ms = Ms(t1);
  (void)(*vm)->Stop(2s);
  if (!st.ok()) {
    std::printf("snapshot failed: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("snapshot: %.1f ms; state.bin %.1f MB; snapshot dir allocated %.1f MB\n", snap_ms,
              fs::file_size(snap / "state.bin") / 1e6, AllocatedBytes(snap) / 1e6);

  std::vector<double> lat, restore_only;
  for (int i = 0; i < sequential; ++i) {
    auto spec = Spec(root, "seq", mib, netns, i);
    auto t = Clock::now();
    auto c = vmm->Restore(spec, snap.string());
    if (!c.ok()) {
      std::printf("restore failed: %s\n", c.status().ToString().c_str());
      return 1;
    }
    restore_only.push_back(Ms(t));
    if (!WaitPing(**c, 30s)) {
      std::printf("clone did not answer\n");
      return 1;
    }
    lat.push_back(Ms(t));
    (void)(*c)->Stop(2s);
  }
  std::sort(lat.begin(), lat.end());
  std::sort(restore_only.begin(), restore_only.end());
  std::printf("restore (Restore() returns): min %.0f median %.0f max %.0f ms\n", restore_only.front(),
              restore_only[restore_only.size() / 2], restore_only.back());
  std::printf("restore → first agent ping: min %.0f median %.0f max %.0f ms (n=%d)\n", lat.front(),
              lat[lat.size() / 2], lat.back(), sequential);

  constexpr int kClones = 8;
  auto t2 = Clock::now();
  std::vector<std::future<std::unique_ptr<Vm>>> fut;
  for (int i = 0; i < kClones; ++i) {
    fut.push_back(std::async(std::launch::async, [&, i]() -> std::unique_ptr<Vm> {
      auto spec = Spec(root, "par", mib, netns, 100 + i);
      auto c = vmm->Restore(spec, snap.string());
      if (!c.ok() || !WaitPing(**c, 60s)) return nullptr;
      return std::move(*c);
    }));
  }
  std::vector<std::unique_ptr<Vm>> clones;
  for (auto& f : fut) clones.push_back(f.get());
  double all_ms = Ms(t2);
  uint64_t pss = 0;
  int ok = 0;
  for (auto& c : clones) {
    if (!c) continue;
    ++ok;
    pss += PssKb(c->pid());
  }
  std::printf("%d clones concurrently → all answered ping: %.0f ms; PSS total %.0f MB (%.1f MB each)\n", ok,
              all_ms, pss / 1024.0, ok ? pss / 1024.0 / ok : 0.0);
  for (auto& c : clones)
    if (c) (void)c->Stop(2s);
  std::error_code ec;
  fs::remove_all(root, ec);
  return ok == kClones ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t mib = argc > 1 ? static_cast<uint32_t>(std::atoi(argv[1])) : 512;
  int seq = argc > 2 ? std::atoi(argv[2]) : 5;
  bool netns = argc > 3 && std::string(argv[3]) == "netns";
  int rc = 0;
  rc |= Measure(QemuMemoryMode::kStream, mib, seq, netns);
  rc |= Measure(QemuMemoryMode::kFile, mib, seq, netns);
  return rc;
}
