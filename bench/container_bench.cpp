// Container create -> container running, cold vs warm created vs warm parked vs pooled + parked, through the library
// (ContainerManager + RestoreEngine + QEMU + the Docker daemon inside the guest), same container image, one run:
//   - N containers with a cold-booted VM (force_cold), one after the other
//   - the runtime snapshot build, which preloads busybox:latest (baked into the runtime image: no pull) and so
//     parks one busybox container (docs/docker-runtime.md, "Parked containers")
//   - N warm containers on the created path (docker create + start in the clone; `read_only` is what sends
//     them there, the one request field a parked container cannot honour)
//   - N warm containers on the parked path (the snapshot's container gets the command)
//   - the service reopened with a clone pool of P clones (RestoreOptions::pool) on the same snapshot, then N
//     containers that each take a pooled clone and its parked container: before each, the bench waits until the
//     pool is full again and reads the PSS (/proc/<pid>/smaps_rollup) of every pooled clone's VMM process
// Prints p50/p95 of the total and p50 of every step for each path as Markdown (for docs/benchmarks.md), and the
// pooled clones' memory.
// Usage: container_bench [--image-dir DIR] [--runs N] [--memory-mib M] [--accel tcg|kvm] [--pool P]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <spdlog/spdlog.h>

#include "bench_util.hpp"
#include "fcwarm/fcwarm.hpp"

using namespace fcwarm;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

using bench::Percentile;

[[noreturn]] void Die(const std::string& what, const Status& st) {
  std::fprintf(stderr, "container_bench: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

// The steps of the table, in order; "vm_start" is cold_boot (cold), restore (warm) or pool_take (pooled: the
// take and its agent ping). "provision" is the VM's own total (request to a verified VM).
const char* kSteps[] = {"vm_start",         "agent",           "identity",         "runtime_verify", "provision",
                        "container_create", "container_start", "container_launch", "total"};

struct Series {
  std::map<std::string, std::vector<double>> steps;
  int warm = 0;
  int parked = 0;
  int pooled = 0;
  std::vector<double> pss_mib;  // pooled: every pooled clone's PSS, read while the pool was full
};

enum class Path { kCold, kWarmCreated, kWarmParked, kPooled };
const char* Name(Path p) {
  return p == Path::kCold ? "cold" : p == Path::kWarmCreated ? "warm created" : p == Path::kWarmParked ? "warm parked" : "pooled + parked";
}

// Waits until the pool of the only configured image holds `size` clones; records their PSS.
void WaitForFullPool(Service& svc, unsigned size, Series* out) {
  auto deadline = Clock::now() + std::chrono::minutes(10);
  while (true) {
    auto p = svc.engine().Pool();
    if (!p.empty() && p.front().clones.size() >= size) {
      for (const auto& c : p.front().clones) out->pss_mib.push_back(static_cast<double>(c.pss_bytes.value_or(0)) / 1048576.0);
      return;
    }
    if (Clock::now() > deadline) {
      Die("pool", Status::DeadlineExceeded(p.empty() ? "no pool" : "pool not full: " + p.front().last_error));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void RunContainers(Service& svc, const std::string& image, int n, Path path, unsigned pool, Series* out) {
  const bool cold = path == Path::kCold;
  for (int i = 0; i < n; ++i) {
    if (path == Path::kPooled) WaitForFullPool(svc, pool, out);
    ContainerRequest r;
    r.runtime_image = image;
    r.image = "busybox:latest";
    r.command = {"sh", "-c", "hostname; head -c 16 /dev/urandom | od -An -tx1"};
    r.force_cold = cold;
    r.read_only = path == Path::kWarmCreated;
    auto c = svc.containers().Create(r);
    if (!c.ok()) Die(Name(path), c.status());
    auto t = c->timings;
    t["vm_start"] = t.count("pool_take") ? t["pool_take"] : t.count("restore") ? t["restore"] : t["cold_boot"];
    for (const char* s : kSteps) out->steps[s].push_back(t.count(s) ? t[s] : 0.0);
    out->warm += c->boot_method == BootMethod::kWarm;
    out->parked += c->container_path == "parked";
    out->pooled += t.count("pool_take") ? 1 : 0;
    if ((path == Path::kWarmParked || path == Path::kPooled) && c->container_path != "parked") {
      std::fprintf(stderr, "  not parked: %s\n", c->container_path_reason.c_str());
    }
    auto done = svc.containers().Wait(c->id, std::chrono::seconds(120));
    if (!done.ok() || done->state != ContainerState::kExited || done->exit_code != 0) {
      Die("container did not exit 0", done.ok() ? Status::Internal(done->last_error) : done.status());
    }
    std::printf("  %s %2d: total %7.0f ms (vm %6.0f, runtime_verify %6.0f, create %5.0f, start %5.0f, launch %5.0f)\n",
                Name(path), i + 1, t["total"], t["vm_start"], t["runtime_verify"], t["container_create"],
                t["container_start"], t["container_launch"]);
    std::fflush(stdout);
    if (auto st = svc.containers().Destroy(c->id); !st.ok()) Die("destroy", st);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string image_dir = "/var/cache/fcwarm/guest/docker-current";
  int runs = 10;
  uint32_t memory = 1024;
  std::string accel = "tcg";
  unsigned pool = 2;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "container_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--image-dir") {
      image_dir = next();
    } else if (a == "--runs") {
      runs = std::atoi(next().c_str());
    } else if (a == "--memory-mib") {
      memory = static_cast<uint32_t>(std::atoi(next().c_str()));
    } else if (a == "--accel") {
      accel = next();
    } else if (a == "--pool") {
      int p = std::atoi(next().c_str());
      if (p < 0 || p > static_cast<int>(RestoreOptions::kMaxPoolSize)) {
        std::fprintf(stderr, "container_bench: --pool must be between 0 and %u\n", RestoreOptions::kMaxPoolSize);
        return 2;
      }
      pool = static_cast<unsigned>(p);
    } else {
      std::fprintf(stderr,
                   "usage: container_bench [--image-dir DIR] [--runs N] [--memory-mib M] [--accel tcg|kvm] "
                   "[--pool P]\n");
      return 2;
    }
  }
  if (runs < 1) runs = 1;
  spdlog::set_level(spdlog::level::warn);

  fs::path work = fs::temp_directory_path() / ("fcwarm-container-bench-" + std::to_string(::getpid()));
  fs::create_directories(work);
  auto vmms = std::make_shared<VmmRegistry>();
  QemuOptions qo;
  qo.accelerator = accel;
  vmms->Add(std::shared_ptr<Vmm>(MakeQemuVmm(qo)));
  auto so = ServiceOptions::UnderDirectory(work.string());
  so.snapshots.preload_images = {"busybox:latest"};  // baked into the runtime image: parked, never pulled
  auto svc = Service::Open(so, vmms);
  if (!svc.ok()) Die("open", svc.status());
  auto img = RuntimeImageFromArtifacts("docker", image_dir);
  if (!img.ok()) Die("image", img.status());
  img->shape.memory_mib = memory;
  auto reg = (*svc)->images().Register(*img);
  if (!reg.ok()) Die("register image", reg.status());

  std::printf("container_bench: %d cold + %d warm created + %d warm parked + %d pooled containers (pool of %u), "
              "image %s, %u MiB, accel %s\n",
              runs, runs, runs, pool > 0 ? runs : 0, pool, image_dir.c_str(), memory, accel.c_str());
  Series cold, created, warm, pooled;
  RunContainers(**svc, reg->id, runs, Path::kCold, 0, &cold);
  auto t0 = Clock::now();
  auto s = (*svc)->snapshots().CreateSnapshot(reg->id);
  if (!s.ok()) Die("snapshot", s.status());
  auto snap = (*svc)->snapshots().WaitWhileCreating(s->id, std::chrono::minutes(10));
  if (!snap.ok() || snap->state != SnapshotState::kReady) {
    Die("snapshot build", snap.ok() ? Status::Internal(snap->last_error) : snap.status());
  }
  double build_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  std::printf("  snapshot build: %.0f ms, %.0f MB on disk\n", build_ms, static_cast<double>(snap->disk_bytes) / 1e6);
  std::printf("  parked containers in the snapshot: %zu\n", snap->parked.size());
  RunContainers(**svc, reg->id, runs, Path::kWarmCreated, 0, &created);
  RunContainers(**svc, reg->id, runs, Path::kWarmParked, 0, &warm);
  if (pool > 0) {
    // The same store and snapshot, now with a pool of the image.
    svc->reset();
    so.restore.pool = {{reg->name, pool}};
    svc = Service::Open(so, vmms);
    if (!svc.ok()) Die("reopen with a pool", svc.status());
    RunContainers(**svc, reg->id, runs, Path::kPooled, pool, &pooled);
  }

  std::printf("\n| step (p50, ms) | cold | warm created | warm parked | pooled + parked |\n"
              "| --- | ---: | ---: | ---: | ---: |\n");
  for (const char* step : kSteps) {
    std::string label = std::string(step) == "vm_start"    ? "VM boot (cold) / restore (warm) / pool take (pooled)"
                        : std::string(step) == "provision" ? "provision (the VM: request to verified VM)"
                                                           : step;
    std::printf("| %s | %.0f | %.0f | %.0f | %.0f |\n", label.c_str(), Percentile(cold.steps[step], 50),
                Percentile(created.steps[step], 50), Percentile(warm.steps[step], 50),
                Percentile(pooled.steps[step], 50));
  }
  double c50 = Percentile(cold.steps["total"], 50), r50 = Percentile(created.steps["total"], 50),
         w50 = Percentile(warm.steps["total"], 50), p50 = Percentile(pooled.steps["total"], 50);
  std::printf("| total p95 | %.0f | %.0f | %.0f | %.0f |\n", Percentile(cold.steps["total"], 95),
              Percentile(created.steps["total"], 95), Percentile(warm.steps["total"], 95),
              Percentile(pooled.steps["total"], 95));
  std::printf("\ncreate -> running p50: cold %.0f ms, warm created %.0f ms (%.1fx), warm parked %.0f ms (%.1fx)",
              c50, r50, r50 > 0 ? c50 / r50 : 0.0, w50, w50 > 0 ? c50 / w50 : 0.0);
  if (pool > 0) std::printf(", pooled + parked %.0f ms (%.1fx)", p50, p50 > 0 ? c50 / p50 : 0.0);
  std::printf("; warm boots %d/%d and %d/%d, parked %d/%d, pooled takes %d/%d; snapshot build %.0f ms\n",
              created.warm, runs, warm.warm, runs, warm.parked, runs, pooled.pooled, pool > 0 ? runs : 0, build_ms);
  if (pool > 0) {
    std::printf("pooled clones' VMM PSS (%zu samples, pool full before each take): p50 %.0f MiB, p95 %.0f MiB, "
                "max %.0f MiB per clone; the pool of %u ≈ %.0f MiB\n",
                pooled.pss_mib.size(), Percentile(pooled.pss_mib, 50), Percentile(pooled.pss_mib, 95),
                Percentile(pooled.pss_mib, 100), pool, Percentile(pooled.pss_mib, 50) * pool);
  }
  svc->reset();
  std::error_code ec;
  fs::remove_all(work, ec);
  return warm.warm == runs && created.warm == runs && warm.parked == runs &&
                 (pool == 0 || (pooled.pooled == runs && pooled.parked == runs))
             ? 0
             : 1;
}
