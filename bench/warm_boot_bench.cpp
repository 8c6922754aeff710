// Warm boot vs cold boot through the library, on one guest, in one run (QEMU backend):
//   - cold boot -> guest agent ready (RestoreEngine with force_cold), N times
//   - snapshot build time and bytes on disk
//   - warm restore -> agent ready and verified, p50/p95 over >= 20 restores
//   - 8 clones restored concurrently vs 8 cold-booted VMs: total host memory (PSS from smaps_rollup)
// Usage: warm_boot_bench [--guest-dir DIR] [--restores N] [--cold N] [--clones N] [--memory-mib M]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "bench_util.hpp"
#include "fcwarm/fcwarm.hpp"

using namespace fcwarm;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

using bench::Percentile;

// PSS of a process in kB.
long PssKb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Pss:", 0) == 0) return std::atol(line.c_str() + 4);
  }
  return 0;
}

[[noreturn]] void Die(const std::string& what, const Status& st) {
  std::fprintf(stderr, "warm_boot_bench: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

// Provisions `n` VMs concurrently; returns their records and the wall time.
std::pair<std::vector<VmRecord>, double> ProvisionMany(Service& svc, const std::string& image, int n, bool cold) {
  auto t0 = Clock::now();
  std::vector<std::future<Result<VmRecord>>> fs;
  for (int i = 0; i < n; ++i) {
    fs.push_back(std::async(std::launch::async, [&] {
      ProvisionRequest r;
      r.runtime_image_id = image;
      r.force_cold = cold;
      return svc.engine().Provision(r);
    }));
  }
  std::vector<VmRecord> out;
  for (auto& f : fs) {
    auto r = f.get();
    if (!r.ok()) Die("provision", r.status());
    out.push_back(*r);
  }
  return {out, std::chrono::duration<double, std::milli>(Clock::now() - t0).count()};
}

double TotalPssMb(Service& svc, const std::vector<VmRecord>& vms) {
  long kb = 0;
  for (const auto& vm : vms) {
    auto h = svc.engine().Handle(vm.id);
    if (h.ok()) kb += PssKb((*h)->pid());
  }
  return static_cast<double>(kb) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string guest = std::getenv("FCWARM_GUEST_DIR") ? std::getenv("FCWARM_GUEST_DIR") : "/var/cache/fcwarm/guest/current";
  int restores = 20, colds = 5, clones = 8;
  uint32_t memory = 512;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--guest-dir") guest = argv[i + 1];
    else if (a == "--restores") restores = std::atoi(argv[i + 1]);
    else if (a == "--cold") colds = std::atoi(argv[i + 1]);
    else if (a == "--clones") clones = std::atoi(argv[i + 1]);
    else if (a == "--memory-mib") memory = static_cast<uint32_t>(std::atoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);  // the library logs every decision; keep the report readable
  auto qemu = std::shared_ptr<Vmm>(MakeQemuVmm());
  if (auto st = ProbeQemu(QemuOptions{}); !st.ok()) Die("qemu", st);
  auto vmms = std::make_shared<VmmRegistry>();
  vmms->Add(qemu);
  fs::path dir = fs::temp_directory_path() / ("fcwarm-bench-" + Id::Generate().str().substr(0, 8));
  auto svc_r = Service::Open(ServiceOptions::UnderDirectory(dir.string()), vmms);
  if (!svc_r.ok()) Die("open", svc_r.status());
  auto& svc = **svc_r;
  RuntimeImage img;
  img.name = "bench";
  img.backend = "qemu";
  img.kernel_path = guest + "/bzImage";
  img.initrd_path = guest + "/initramfs.cpio.gz";
  img.rootfs_path = guest + "/disk.ext4";
  img.shape.memory_mib = memory;
  img.runtime_check = {"file", "/run/fcwarm-runtime-ready", {}};
  auto image = svc.images().Register(img);
  if (!image.ok()) Die("register", image.status());
  std::printf("fcwarm %s warm_boot_bench: QEMU backend (%s), guest %s, %u MiB, 1 vCPU\n",
              std::string(Version()).c_str(), qemu->HostCompatibility()->count("qemu.accel")
                                                  ? qemu->HostCompatibility()->at("qemu.accel").c_str()
                                                  : "tcg",
              guest.c_str(), memory);

  // 1. Cold boots (agent ready + runtime check + identity).
  std::vector<double> cold_ms;
  for (int i = 0; i < colds; ++i) {
    ProvisionRequest r;
    r.runtime_image_id = image->id;
    r.force_cold = true;
    auto vm = svc.engine().Provision(r);
    if (!vm.ok()) Die("cold boot", vm.status());
    cold_ms.push_back(vm->timings["total"]);
    (void)svc.engine().Destroy(vm->id);
  }
  std::printf("cold boot -> agent ready:    p50 %7.0f ms  p95 %7.0f ms  (n=%d)\n", Percentile(cold_ms, 50),
              Percentile(cold_ms, 95), colds);

  // 2. Snapshot build.
  auto t0 = Clock::now();
  auto snap = svc.snapshots().CreateSnapshot(image->id);
  if (!snap.ok()) Die("snapshot", snap.status());
  auto built = svc.snapshots().WaitWhileCreating(snap->id, std::chrono::minutes(10));
  double build_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (!built.ok() || built->state != SnapshotState::kReady) {
    Die("snapshot build", built.ok() ? Status::Unavailable(built->last_error) : built.status());
  }
  std::printf("snapshot build:              %7.0f ms  %.1f MB apparent, %.1f MB allocated on disk\n", build_ms,
              static_cast<double>(built->size_bytes) / 1e6, static_cast<double>(built->disk_bytes) / 1e6);

  // 3. Sequential warm restores.
  std::vector<double> warm_ms, restore_ms;
  for (int i = 0; i < restores; ++i) {
    ProvisionRequest r;
    r.runtime_image_id = image->id;
    auto vm = svc.engine().Provision(r);
    if (!vm.ok()) Die("warm restore", vm.status());
    if (vm->boot_method != BootMethod::kWarm) {
      Die("warm restore", Status::Internal("fell back: " + std::string(ToString(vm->fallback_reason))));
    }
    warm_ms.push_back(vm->timings["total"]);
    restore_ms.push_back(vm->timings["restore"]);
    (void)svc.engine().Destroy(vm->id);
  }
  std::printf("warm restore -> agent ready: p50 %7.0f ms  p95 %7.0f ms  (n=%d; VMM restore step p50 %.0f ms)\n",
              Percentile(warm_ms, 50), Percentile(warm_ms, 95), restores, Percentile(restore_ms, 50));
  std::printf("speed-up (cold p50 / warm p50): %.1fx\n", Percentile(cold_ms, 50) / Percentile(warm_ms, 50));

  // 4. N concurrent clones vs N cold VMs: time until all are ready, and total PSS.
  auto [warm_vms, warm_wall] = ProvisionMany(svc, image->id, clones, false);
  double warm_pss = TotalPssMb(svc, warm_vms);
  for (const auto& vm : warm_vms) (void)svc.engine().Destroy(vm.id);
  auto [cold_vms, cold_wall] = ProvisionMany(svc, image->id, clones, true);
  double cold_pss = TotalPssMb(svc, cold_vms);
  for (const auto& vm : cold_vms) (void)svc.engine().Destroy(vm.id);
  std::printf("%d concurrent warm clones: all ready in %6.0f ms, total PSS %7.1f MB\n", clones, warm_wall, warm_pss);
  std::printf("%d concurrent cold VMs:    all ready in %6.0f ms, total PSS %7.1f MB\n", clones, cold_wall, cold_pss);
  std::printf("memory ratio (warm/cold): %.2f\n", cold_pss > 0 ? warm_pss / cold_pss : 0.0);
  svc_r->reset();
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
