#include "fcwarm/snapshot_manager.hpp"

#include <spdlog/spdlog.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <set>
#include <thread>

#include "core/internal.hpp"
#include "fcwarm/ids.hpp"
#include "store/images.hpp"
#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"
#include "util/process.hpp"

namespace fcwarm {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {
constexpr const char* kManifestName = "manifest.json";
constexpr int kManifestFormat = 1;

struct Job {
  std::string snapshot_id;
  std::string image_id;
  bool automatic = false;
};

struct BuildCancelled {};
}  // namespace

class SnapshotManager::Impl {
 public:
  Impl(Store& store, VmmRegistry& vmms, SnapshotManagerOptions opts)
      : store_(store), vmms_(vmms), opts_(std::move(opts)) {}

  Status Start() {
    if (opts_.build_workers < 1) return Status::InvalidArgument("build_workers: must be at least 1");
    if (auto st = util::MakeDirs(opts_.root_dir); !st.ok()) return st;
    if (auto st = util::MakeDirs(opts_.build_dir); !st.ok()) return st;
    Reconcile();
    for (unsigned i = 0; i < opts_.build_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    return Status::Ok();
  }

  ~Impl() {
    std::deque<Job> cancelled;
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      cancelled.swap(queue_);
    }
    work_cv_.notify_all();
    state_cv_.notify_all();
    for (auto& t : workers_) t.join();
    for (const auto& job : cancelled) {
      (void)store_.db().Do([&](SQLite::Database& db) {
        detail::AbandonBuild(db, job.snapshot_id, "cancelled: fcwarm shut down before the build started",
                             util::NowMillis());
      });
    }
  }

  // ---- public operations ------------------------------------------------------

  Result<RuntimeSnapshot> CreateSnapshot(const std::string& image_id) {
    if (auto p = Id::Parse("runtime_image_id", image_id); !p.ok()) return p.status();
    {
      std::lock_guard lock(mu_);
      if (stopping_) return Status::Unavailable("snapshot manager is shutting down");
    }
    auto id = Id::Generate().str();
    auto now = util::NowMillis();
    auto created = store_.db().Tx([&](SQLite::Database& db) -> Result<RuntimeSnapshot> {
      auto img = detail::ImageById(db, image_id);
      if (!img.ok()) return img.status();
      if (detail::CountLiveSnapshots(db, image_id) >= opts_.max_snapshots_per_image) {
        return Status::ResourceExhausted("runtime image '" + image_id + "' already has " +
                                         std::to_string(opts_.max_snapshots_per_image) +
                                         " runtime snapshots (max_snapshots_per_image); delete or rebuild one");
      }
      if (detail::CountLiveSnapshots(db, "") >= opts_.max_snapshots_total) {
        return Status::ResourceExhausted("the maximum of " + std::to_string(opts_.max_snapshots_total) +
                                         " runtime snapshots (max_snapshots_total) is reached");
      }
      detail::InsertSnapshot(db, id, image_id, now);
      return detail::SnapshotById(db, id);
    });
    if (!created.ok()) return created;
    Enqueue(Job{id, image_id, false});
    spdlog::info("snapshot {} of image {}: build queued", id, image_id);
    return created;
  }

  Result<RuntimeSnapshot> Get(const std::string& id) const {
    if (auto p = Id::Parse("runtime_snapshot_id", id); !p.ok()) return p.status();
    return store_.db().With([&](SQLite::Database& db) { return detail::SnapshotById(db, id); });
  }

  Result<std::vector<RuntimeSnapshot>> List(const SnapshotFilter& f) const {
    if (!f.runtime_image_id.empty()) {
      if (auto p = Id::Parse("runtime_image_id", f.runtime_image_id); !p.ok()) return p.status();
    }
    return store_.db().With([&](SQLite::Database& db) -> Result<std::vector<RuntimeSnapshot>> {
      return detail::ListSnapshots(db, f);
    });
  }

  Result<RuntimeSnapshot> Rebuild(const std::string& id, bool automatic) {
    if (auto p = Id::Parse("runtime_snapshot_id", id); !p.ok()) return p.status();
    std::unique_lock lock(mu_);
    if (stopping_) return Status::Unavailable("snapshot manager is shutting down");
    auto snap = Get(id);
    if (!snap.ok()) return snap;
    if (snap->state == SnapshotState::kDeleted) {
      return Status::FailedPrecondition("runtime snapshot '" + id + "' is deleted; create a new one");
    }
    if (automatic && (active_snapshots_.count(id) || active_images_.count(snap->runtime_image_id))) {
      // Single-flight per image for automatic rebuilds.
      return Status::AlreadyExists("a build of image '" + snap->runtime_image_id + "' is in flight");
    }
    if (active_snapshots_.count(id)) return snap;  // the build in flight is the rebuild
    auto st =
        store_.db().Do([&](SQLite::Database& db) { detail::RequeueSnapshot(db, id, util::NowMillis()); });
    if (!st.ok()) return st;
    EnqueueLocked(Job{id, snap->runtime_image_id, automatic});
    lock.unlock();
    work_cv_.notify_one();
    state_cv_.notify_all();
    spdlog::info("snapshot {}: {} rebuild queued", id, automatic ? "automatic" : "requested");
    return Get(id);
  }

  Status Delete(const std::string& id) {
    if (auto p = Id::Parse("runtime_snapshot_id", id); !p.ok()) return p.status();
    auto st = store_.db().Tx([&](SQLite::Database& db) -> Status {
      auto snap = detail::SnapshotById(db, id);
      if (!snap.ok()) return snap.status();
      if (snap->state == SnapshotState::kDeleted) return Status::Ok();
      detail::SetSnapshotState(db, id, SnapshotState::kDeleted, util::NowMillis());
      detail::RetireCurrentGeneration(db, id);
      Event e;
      e.kind = "snapshot";
      e.snapshot_id = id;
      e.runtime_image_id = snap->runtime_image_id;
      e.outcome = "deleted";
      detail::InsertEvent(db, e);
      return Status::Ok();
    });
    if (!st.ok()) return st;
    state_cv_.notify_all();
    spdlog::info("snapshot {}: deleted", id);
    (void)CollectGarbage();
    return Status::Ok();
  }

  Result<RuntimeSnapshot> WaitWhileCreating(const std::string& id, std::chrono::milliseconds timeout) const {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::unique_lock lock(mu_);
    while (true) {
      auto snap = Get(id);
      if (!snap.ok() || snap->state != SnapshotState::kCreating || stopping_) return snap;
      if (state_cv_.wait_until(lock, deadline) == std::cv_status::timeout) return Get(id);
    }
  }

  Result<GcReport> CollectGarbage() {
    std::lock_guard gc(gc_mu_);
    GcReport report;
    auto dirs =
        store_.db().With([&](SQLite::Database& db) -> Result<std::vector<detail::CollectableGeneration>> {
          return detail::CollectableGenerations(db);
        });
    if (!dirs.ok()) return dirs.status();
    for (const auto& r : *dirs) {
      const std::string& snapshot_id = r.snapshot_id;
      const int64_t number = r.number;
      const fs::path dir = r.dir;
      if (!util::IsWithin(opts_.root_dir, dir)) {
        spdlog::error("gc: refusing to remove {} outside the snapshot root", dir.string());
        continue;
      }
      report.freed_bytes += util::RemoveTree(dir);
      report.removed_generations++;
      std::error_code ec;
      fs::remove(dir.parent_path(), ec);  // the snapshot directory, if now empty
      (void)store_.db().Do([&](SQLite::Database& db) {
        detail::SetGenerationStatus(db, snapshot_id, number, detail::GenerationStatus::kRemoved);
      });
      spdlog::info("gc: removed generation {} of snapshot {} ({})", number, snapshot_id, dir.string());
    }
    if (report.removed_generations > 0) {
      Event e;
      e.kind = "gc";
      e.outcome = "removed";
      e.message = std::to_string(report.removed_generations) + " generation(s), " +
                  std::to_string(report.freed_bytes) + " bytes";
      internal::Emit(store_, e);
    }
    return report;
  }

  Result<RuntimeSnapshot> PinGeneration(const std::string& snapshot_id, const std::string& vm_id) {
    std::lock_guard gc(gc_mu_);
    return store_.db().Tx([&](SQLite::Database& db) -> Result<RuntimeSnapshot> {
      auto snap = detail::SnapshotById(db, snapshot_id);
      if (!snap.ok()) return snap;
      if (snap->state != SnapshotState::kReady || snap->generation_dir.empty()) {
        return Status::FailedPrecondition("runtime snapshot '" + snapshot_id + "' is " +
                                          std::string(ToString(snap->state)) + ", not ready");
      }
      if (!detail::PinGeneration(db, vm_id, snapshot_id, snap->generation, util::NowMillis())) {
        return Status::NotFound("vm '" + vm_id + "' not found");
      }
      return snap;
    });
  }

  Result<std::pair<std::string, std::map<std::string, std::string>>> CompatibilityKeyFor(const RuntimeImage& image) const {
    auto vmm = vmms_.Find(image.backend);
    if (!vmm) return Status::Unavailable("backend '" + image.backend + "' is not available");
    auto host = vmm->HostCompatibility();
    if (!host.ok()) return host.status();
    std::map<std::string, std::string> c = *host;
    c["vmm.kind"] = vmm->Kind();
    auto add_file = [&](const std::string& name, const std::string& path) -> Status {
      if (path.empty()) return Status::Ok();
      auto d = CachedDigest(path);
      if (!d.ok()) return d.status().WithContext(name);
      c[name] = *d;
      return Status::Ok();
    };
    if (auto st = add_file("guest.kernel", image.kernel_path); !st.ok()) return st;
    if (auto st = add_file("guest.initrd", image.initrd_path); !st.ok()) return st;
    if (auto st = add_file("guest.rootfs", image.rootfs_path); !st.ok()) return st;
    c["guest.boot_args"] = util::Xxh3Hex(image.boot_args);
    c["vm.vcpus"] = std::to_string(image.shape.vcpus);
    c["vm.memory_mib"] = std::to_string(image.shape.memory_mib);
    c["agent.protocol"] = std::to_string(kGuestProtocolVersion);
    std::string canon;
    for (const auto& [k, v] : c) canon += k + "=" + v + "\n";
    return std::make_pair(util::Xxh3Hex(canon), c);
  }

  bool RequestAutomaticRebuild(const std::string& id) { return Rebuild(id, true).ok(); }

  int ActiveBuilds() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(active_snapshots_.size());
  }

  int AddListener(BuildListener l) {
    std::lock_guard lock(listeners_mu_);
    int token = ++next_token_;
    listeners_[token] = std::move(l);
    return token;
  }
  void RemoveListener(int token) {
    std::lock_guard lock(listeners_mu_);
    listeners_.erase(token);
  }

  const ReconcileReport& report() const { return report_; }
  const SnapshotManagerOptions& options() const { return opts_; }

 private:
  void Enqueue(Job job) {
    {
      std::lock_guard lock(mu_);
      EnqueueLocked(std::move(job));
    }
    work_cv_.notify_one();
  }
  void EnqueueLocked(Job job) {
    active_snapshots_.insert(job.snapshot_id);
    active_images_[job.image_id]++;
    queue_.push_back(std::move(job));
  }

  void WorkerLoop() {
    while (true) {
      Job job;
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      BuildOutcome outcome = RunBuild(job);
      {
        std::lock_guard lock(mu_);
        active_snapshots_.erase(job.snapshot_id);
        if (--active_images_[job.image_id] <= 0) active_images_.erase(job.image_id);
      }
      state_cv_.notify_all();
      std::map<int, BuildListener> listeners;
      {
        std::lock_guard lock(listeners_mu_);
        listeners = listeners_;
      }
      for (auto& [token, l] : listeners) {
        try {
          l(outcome);
        } catch (const std::exception& e) {
          spdlog::error("build listener threw: {}", e.what());
        }
      }
      (void)CollectGarbage();
    }
  }

  bool Stopping() const {
    std::lock_guard lock(mu_);
    return stopping_;
  }

  void SetPhase(const std::string& id, BuildPhase phase) {
    if (Stopping()) throw BuildCancelled{};
    (void)store_.db().Do(
        [&](SQLite::Database& db) { detail::SetSnapshotPhase(db, id, phase, util::NowMillis()); });
    state_cv_.notify_all();
  }

  BuildOutcome RunBuild(const Job& job) {
    BuildOutcome out;
    out.snapshot_id = job.snapshot_id;
    out.runtime_image_id = job.image_id;
    out.automatic = job.automatic;
    auto t_total = std::chrono::steady_clock::now();

    auto image = store_.db().With([&](SQLite::Database& db) { return detail::ImageById(db, job.image_id); });
    auto snap = Get(job.snapshot_id);
    if (!image.ok() || !snap.ok() || snap->state == SnapshotState::kDeleted) {
      out.error = "snapshot or image vanished before the build started";
      return out;
    }
    int64_t gen = 0;
    (void)store_.db().Do(
        [&](SQLite::Database& db) { gen = detail::NextGenerationNumber(db, job.snapshot_id); });
    out.generation = gen;
    fs::path snap_dir = fs::path(opts_.root_dir) / job.image_id / job.snapshot_id;
    fs::path final_dir = snap_dir / ("gen-" + std::to_string(gen));
    fs::path tmp_dir = snap_dir / (".tmp-gen-" + std::to_string(gen));
    fs::path work_dir = fs::path(opts_.build_dir) / (job.snapshot_id + "-gen-" + std::to_string(gen));
    std::string owner = "build:" + job.snapshot_id;
    std::unique_ptr<Vm> vm;
    Status result;
    BuildPhase phase = BuildPhase::kQueued;
    auto t_phase = std::chrono::steady_clock::now();
    auto enter = [&](BuildPhase p) {
      if (phase != BuildPhase::kQueued) out.timings[std::string(ToString(phase))] = util::MsSince(t_phase);
      phase = p;
      t_phase = std::chrono::steady_clock::now();
      SetPhase(job.snapshot_id, p);
    };

    try {
      (void)store_.db().Do([&](SQLite::Database& db) {
        detail::InsertGeneration(db, job.snapshot_id, gen, final_dir.string(), util::NowMillis());
      });
      util::RemoveTree(tmp_dir);
      util::RemoveTree(work_dir);
      if (auto st = util::MakeDirs(tmp_dir); !st.ok()) throw st;
      if (auto st = util::MakeDirs(work_dir); !st.ok()) throw st;
      auto vmm = vmms_.Find(image->backend);
      if (!vmm) throw Status::Unavailable("backend '" + image->backend + "' is not available");
      auto key = CompatibilityKeyFor(*image);
      if (!key.ok()) throw key.status();

      enter(BuildPhase::kBooting);
      LaunchSpec spec;
      spec.vm_id = Id::Generate().str();
      spec.image = *image;
      spec.work_dir = work_dir.string();
      spec.network.hostname = "fcwarm-build";
      spec.on_process_started = [&](int pid) { internal::RecordProcess(store_, pid, "build", owner); };
      auto booted = vmm->ColdBoot(spec);
      if (!booted.ok()) throw booted.status().WithContext("cold boot of the build VM");
      vm = std::move(booted).value();

      enter(BuildPhase::kWaitingRuntime);
      // The same waits RestoreEngine uses, given up on shutdown.
      auto stopping = [this] { return Stopping(); };
      auto agent = internal::WaitForAgent(*vm, opts_.agent_timeout, opts_.poll_interval, stopping);
      if (Stopping()) throw BuildCancelled{};
      if (!agent.ok()) throw agent.status();
      auto ready = internal::WaitForRuntime(*vm, image->runtime_check, opts_.runtime_timeout, opts_.poll_interval,
                                            stopping);
      if (Stopping()) throw BuildCancelled{};
      if (!ready.ok()) throw ready;

      enter(BuildPhase::kQuiescing);
      if (auto st = vm->guest().Quiesce(std::chrono::milliseconds(30000)); !st.ok()) throw st.WithContext("quiesce");
      enter(BuildPhase::kPausing);
      if (auto st = vm->Pause(); !st.ok()) throw st.WithContext("pause");
      enter(BuildPhase::kSnapshotting);
      if (auto st = vm->Snapshot(tmp_dir.string()); !st.ok()) throw st.WithContext("snapshot");
      // The build VM is no longer needed once its state is on disk.
      (void)vm->Stop(opts_.stop_grace);
      vm.reset();
      internal::ForgetProcesses(store_, owner);

      enter(BuildPhase::kVerifying);
      RuntimeSnapshot built;
      std::error_code ec;
      std::vector<fs::path> entries;
      for (const auto& e : fs::directory_iterator(tmp_dir, ec)) entries.push_back(e.path());
      std::sort(entries.begin(), entries.end());
      for (const auto& p : entries) {
        if (!fs::is_regular_file(p)) throw Status::Internal("snapshot produced a non-regular file: " + p.string());
        if (p.filename() == kManifestName) throw Status::Internal("backend wrote a file named manifest.json");
        if (auto st = util::FsyncPath(p); !st.ok()) throw st;
        auto digest = util::Xxh3File(p);
        if (!digest.ok()) throw digest.status();
        SnapshotFile f;
        f.name = p.filename().string();
        f.size = fs::file_size(p);
        f.mtime_ns = util::MtimeNs(p);
        f.xxh3 = *digest;
        built.files.push_back(std::move(f));
      }
      if (built.files.empty()) throw Status::Internal("the backend wrote no snapshot files");
      json::array files;
      for (const auto& f : built.files) files.push_back(json::object{{"name", f.name}, {"size", f.size}, {"xxh3", f.xxh3}});
      json::object comp;
      for (const auto& [k, v] : key->second) comp[k] = v;
      json::object manifest{{"format", kManifestFormat},
                            {"snapshot_id", job.snapshot_id},
                            {"runtime_image_id", job.image_id},
                            {"generation", gen},
                            {"compatibility_key", key->first},
                            {"compatibility", comp},
                            {"vm_shape", json::object{{"vcpus", image->shape.vcpus}, {"memory_mib", image->shape.memory_mib}}},
                            {"agent_protocol", kGuestProtocolVersion},
                            {"files", files},
                            {"created_at", util::NowMillis()}};
      std::string manifest_text = json::serialize(manifest) + "\n";
      if (auto st = util::WriteFileDurable(tmp_dir / kManifestName, manifest_text); !st.ok()) throw st;
      std::string manifest_digest = util::Xxh3Hex(manifest_text);

      enter(BuildPhase::kPublishing);
      if (auto st = util::FsyncPath(tmp_dir); !st.ok()) throw st;
      util::RemoveTree(final_dir);
      fs::rename(tmp_dir, final_dir, ec);
      if (ec) throw Status::Unavailable("publish " + final_dir.string() + ": " + ec.message());
      if (auto st = util::FsyncPath(snap_dir); !st.ok()) throw st;
      uint64_t apparent = 0, allocated = 0;
      util::DiskUsage(final_dir, &apparent, &allocated);
      bool deleted_meanwhile = false;
      detail::PublishedGeneration published{.number = gen,
                                            .dir = final_dir.string(),
                                            .compatibility_key = key->first,
                                            .compatibility = key->second,
                                            .size_bytes = apparent,
                                            .disk_bytes = allocated,
                                            .files = built.files,
                                            .manifest_digest = manifest_digest};
      auto st = store_.db().Tx([&](SQLite::Database& db) -> Status {
        auto cur = detail::SnapshotById(db, job.snapshot_id);
        if (!cur.ok()) return cur.status();
        if (cur->state == SnapshotState::kDeleted) {
          deleted_meanwhile = true;
          detail::SetGenerationStatus(db, job.snapshot_id, gen, detail::GenerationStatus::kRetired);
          return Status::Ok();
        }
        detail::RetireCurrentGeneration(db, job.snapshot_id);
        detail::SetGenerationStatus(db, job.snapshot_id, gen, detail::GenerationStatus::kCurrent);
        detail::PublishSnapshot(db, job.snapshot_id, published, util::NowMillis());
        return Status::Ok();
      });
      if (!st.ok()) throw st;
      out.timings[std::string(ToString(phase))] = util::MsSince(t_phase);
      out.timings["total"] = util::MsSince(t_total);
      out.ok = !deleted_meanwhile;
      if (deleted_meanwhile) out.error = "snapshot was deleted during the build";
    } catch (const Status& st) {
      result = st;
    } catch (const BuildCancelled&) {
      result = Status::Unavailable("cancelled: fcwarm shut down during the build");
    } catch (const std::exception& e) {
      result = Status::Internal(std::string("build failed: ") + e.what());
    }

    if (vm) {
      (void)vm->Stop(opts_.stop_grace);
      vm.reset();
    }
    internal::ForgetProcesses(store_, owner);
    util::RemoveTree(work_dir);

    if (!result.ok()) {
      util::RemoveTree(tmp_dir);
      out.ok = false;
      out.error = std::string("build failed in phase ") + std::string(ToString(phase)) + ": " + result.message();
      out.timings["total"] = util::MsSince(t_total);
      (void)store_.db().Tx([&](SQLite::Database& db) -> Status {
        detail::DeleteGeneration(db, job.snapshot_id, gen);
        detail::RetireCurrentGeneration(db, job.snapshot_id);
        if (auto failures = detail::RecordBuildFailure(db, job.snapshot_id, out.error, util::NowMillis())) {
          out.build_failures = *failures;
        }
        return Status::Ok();
      });
      spdlog::warn("snapshot {}: {}", job.snapshot_id, out.error);
    } else if (out.ok) {
      spdlog::info("snapshot {}: generation {} ready in {:.0f} ms", job.snapshot_id, gen, out.timings["total"]);
    }
    Event e;
    e.kind = "build";
    e.snapshot_id = job.snapshot_id;
    e.runtime_image_id = job.image_id;
    e.outcome = out.ok ? "ready" : "failed";
    e.reason = job.automatic ? "automatic" : "requested";
    e.timings = out.timings;
    e.message = out.ok ? "generation " + std::to_string(gen) : out.error;
    internal::Emit(store_, e);
    return out;
  }

  Result<std::string> CachedDigest(const std::string& path) const {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return Status::Unavailable("cannot stat " + path);
    int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    {
      std::lock_guard lock(digest_mu_);
      auto it = digests_.find(path);
      if (it != digests_.end() && it->second.size == static_cast<uint64_t>(st.st_size) && it->second.mtime == mtime) {
        return it->second.digest;
      }
    }
    auto d = util::Xxh3File(path);
    if (!d.ok()) return d;
    std::lock_guard lock(digest_mu_);
    digests_[path] = {static_cast<uint64_t>(st.st_size), mtime, *d};
    return d;
  }

  void Reconcile() {
    // 1. Builds a crash interrupted.
    (void)store_.db().Tx([&](SQLite::Database& db) -> Status {
      for (const auto& snap : detail::ListSnapshots(db, {"", SnapshotState::kCreating, false})) {
        const std::string& id = snap.id;
        const std::string& image = snap.runtime_image_id;
        detail::AbandonBuild(db, id, "interrupted", util::NowMillis());
        detail::RetireCurrentGeneration(db, id);
        Event e;
        e.kind = "reconcile";
        e.snapshot_id = id;
        e.runtime_image_id = image;
        e.outcome = "unhealthy";
        e.reason = "interrupted";
        e.message = "build interrupted by a restart";
        detail::InsertEvent(db, e);
        report_.interrupted_builds++;
      }
      detail::DeleteBuildingGenerations(db);
      return Status::Ok();
    });
    // 2. Temporary directories.
    std::error_code ec;
    for (const auto& img : fs::directory_iterator(opts_.root_dir, ec)) {
      if (!img.is_directory()) continue;
      for (const auto& snap : fs::directory_iterator(img.path(), ec)) {
        if (!snap.is_directory()) continue;
        for (const auto& gen : fs::directory_iterator(snap.path(), ec)) {
          if (gen.path().filename().string().rfind(".tmp-", 0) == 0) {
            util::RemoveTree(gen.path());
            report_.removed_temp_dirs++;
          }
        }
      }
    }
    for (const auto& w : fs::directory_iterator(opts_.build_dir, ec)) {
      util::RemoveTree(w.path());
      report_.removed_temp_dirs++;
    }
    // 3. VMM processes of the previous run.
    if (opts_.reconcile_processes) {
      (void)store_.db().With([&](SQLite::Database& db) -> Status {
        for (const auto& p : detail::RecordedProcesses(db)) {
          if (p.pid > 1 && util::IsSameProcess(p.pid, p.start_time)) {
            spdlog::warn("reconcile: killing leftover {} process {} of {}", p.role, p.pid, p.owner_id);
            ::kill(p.pid, SIGKILL);
            util::WaitFor(p.pid, std::chrono::milliseconds(2000));
            report_.killed_processes++;
          }
        }
        detail::ForgetAllProcesses(db);
        return Status::Ok();
      });
    }
    // 4. VMs the previous run owned: their processes are gone, release what they held.
    (void)store_.db().Tx([&](SQLite::Database& db) -> Status {
      for (const auto& vm : detail::LiveVms(db)) {
        const std::string& id = vm.id;
        const std::string& dir = vm.work_dir;
        detail::SetVmState(db, id, VmState::kLost, "owner process restarted", util::NowMillis());
        detail::ReleaseAddress(db, id);
        if (!dir.empty() && fs::path(dir).filename() == id) util::RemoveTree(dir);
        report_.lost_vms++;
      }
      return Status::Ok();
    });
    if (report_.interrupted_builds || report_.killed_processes || report_.lost_vms || report_.removed_temp_dirs) {
      spdlog::warn("reconcile: {} interrupted build(s), {} temp dir(s) removed, {} process(es) killed, {} VM(s) lost",
                   report_.interrupted_builds, report_.removed_temp_dirs, report_.killed_processes, report_.lost_vms);
    }
    (void)CollectGarbage();
  }

  Store& store_;
  VmmRegistry& vmms_;
  SnapshotManagerOptions opts_;

  mutable std::mutex mu_;
  mutable std::condition_variable work_cv_;
  mutable std::condition_variable state_cv_;
  std::deque<Job> queue_;
  std::set<std::string> active_snapshots_;
  std::map<std::string, int> active_images_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;

  std::mutex gc_mu_;
  std::mutex listeners_mu_;
  std::map<int, BuildListener> listeners_;
  int next_token_ = 0;

  struct DigestEntry {
    uint64_t size;
    int64_t mtime;
    std::string digest;
  };
  mutable std::mutex digest_mu_;
  mutable std::map<std::string, DigestEntry> digests_;
  ReconcileReport report_;
};

// ---- facade -------------------------------------------------------------------

SnapshotManager::SnapshotManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SnapshotManager::~SnapshotManager() = default;

Result<std::unique_ptr<SnapshotManager>> SnapshotManager::Create(Store& store, VmmRegistry& vmms,
                                                                 SnapshotManagerOptions options) {
  auto impl = std::make_unique<Impl>(store, vmms, std::move(options));
  if (auto st = impl->Start(); !st.ok()) return st;
  return std::unique_ptr<SnapshotManager>(new SnapshotManager(std::move(impl)));
}

Result<RuntimeSnapshot> SnapshotManager::CreateSnapshot(const std::string& id) { return impl_->CreateSnapshot(id); }
Result<RuntimeSnapshot> SnapshotManager::Get(const std::string& id) const { return impl_->Get(id); }
Result<std::vector<RuntimeSnapshot>> SnapshotManager::List(const SnapshotFilter& f) const { return impl_->List(f); }
Result<RuntimeSnapshot> SnapshotManager::Rebuild(const std::string& id) { return impl_->Rebuild(id, false); }
Status SnapshotManager::Delete(const std::string& id) { return impl_->Delete(id); }
Result<RuntimeSnapshot> SnapshotManager::WaitWhileCreating(const std::string& id, std::chrono::milliseconds t) const {
  return impl_->WaitWhileCreating(id, t);
}
Result<GcReport> SnapshotManager::CollectGarbage() { return impl_->CollectGarbage(); }
const ReconcileReport& SnapshotManager::reconcile_report() const { return impl_->report(); }
int SnapshotManager::AddBuildListener(BuildListener l) { return impl_->AddListener(std::move(l)); }
void SnapshotManager::RemoveBuildListener(int token) { impl_->RemoveListener(token); }
bool SnapshotManager::RequestAutomaticRebuild(const std::string& id) { return impl_->RequestAutomaticRebuild(id); }
Result<RuntimeSnapshot> SnapshotManager::PinGeneration(const std::string& s, const std::string& v) {
  return impl_->PinGeneration(s, v);
}
Result<std::pair<std::string, std::map<std::string, std::string>>> SnapshotManager::CompatibilityKeyFor(
    const RuntimeImage& image) const {
  return impl_->CompatibilityKeyFor(image);
}
int SnapshotManager::ActiveBuilds() const { return impl_->ActiveBuilds(); }
const SnapshotManagerOptions& SnapshotManager::options() const { return impl_->options(); }

}  // namespace fcwarm
