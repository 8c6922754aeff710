#include "fcwarm/snapshot_manager.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <set>
#include <thread>

#include "backends/host_leftovers.hpp"
#include "coord/single_flight.hpp"
#include "core/guest_network.hpp"
#include "core/host_facts.hpp"
#include "core/internal.hpp"
#include "core/shared_snapshots.hpp"
#include "docker/docker_client.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/image_reference.hpp"
#include "net/iptables.hpp"
#include "store/images.hpp"
#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"
#include "util/failpoint.hpp"
#include "util/process.hpp"

namespace fcwarm {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {
constexpr const char* kManifestName = "manifest.json";
constexpr int kManifestFormat = 1;
// Holder of a build VM's address in the store: "build:<snapshot id>" (also the owner of its processes).
constexpr const char* kBuildOwnerPrefix = "build:";
// How many images a service-wide or per-image preload list may name.

struct Job {
  std::string snapshot_id;
  std::string image_id;
  bool automatic = false;
};

}  // namespace

class SnapshotManager::Impl {
 public:
  Impl(Store& store, VmmRegistry& vmms, SnapshotManagerOptions opts)
      : store_(store), vmms_(vmms), opts_(std::move(opts)) {}

  Status Start() {
    if (opts_.build_workers < 1) return Status::InvalidArgument("build_workers: must be at least 1");
    if (auto st = CheckPreloadOptions(); !st.ok()) return st;
    auto shared = internal::SharedSnapshots::Create(opts_);
    if (!shared.ok()) return shared.status();
    shared_ = std::move(*shared);
    if (shared_) {
      // Unreachable or refusing: the node still serves and builds locally; each build says why again.
      if (auto st = shared_->Check(); !st.ok()) {
        spdlog::warn("node {}: {}; snapshots are built here until it answers", shared_->node_id(), st.ToString());
      } else {
        spdlog::info("node {}: snapshot repository '{}', coordination '{}'", shared_->node_id(),
                     shared_->repository_url(), shared_->coordination_url());
      }
    }
    if (auto st = util::MakeDirs(opts_.root_dir); !st.ok()) return st;
    if (auto st = util::MakeDirs(opts_.build_dir); !st.ok()) return st;
    Reconcile();
    ReleaseBuildAddresses();
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
    // Like the RestoreEngine: the fcwarm chains go when no VM of any fcwarm process has rules left.
    if (used_egress_) {
      if (auto st = net::RemoveBaseChains({}); !st.ok())
        spdlog::debug("fcwarm chains stay: {}", st.ToString());
    }
    for (const auto& job : cancelled) {
      (void)detail::DbOf(store_).Do([&](SQLite::Database& db) {
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
    auto created = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Result<RuntimeSnapshot> {
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
    return detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::SnapshotById(db, id); });
  }

  Result<std::vector<RuntimeSnapshot>> List(const SnapshotFilter& f) const {
    if (!f.runtime_image_id.empty()) {
      if (auto p = Id::Parse("runtime_image_id", f.runtime_image_id); !p.ok()) return p.status();
    }
    return detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<std::vector<RuntimeSnapshot>> {
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
        detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::RequeueSnapshot(db, id, util::NowMillis()); });
    if (!st.ok()) return st;
    FCWARM_FAILPOINT("snapshot.rebuild");  // crash only: `creating` is committed, the job not queued yet
    EnqueueLocked(Job{id, snap->runtime_image_id, automatic});
    lock.unlock();
    work_cv_.notify_one();
    state_cv_.notify_all();
    spdlog::info("snapshot {}: {} rebuild queued", id, automatic ? "automatic" : "requested");
    return Get(id);
  }

  Status Delete(const std::string& id) {
    if (auto p = Id::Parse("runtime_snapshot_id", id); !p.ok()) return p.status();
    auto st = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      auto snap = detail::SnapshotById(db, id);
      if (!snap.ok()) return snap.status();
      if (snap->state == SnapshotState::kDeleted) return Status::Ok();
      detail::SetSnapshotState(db, id, SnapshotState::kDeleted, util::NowMillis());
      detail::RetireCurrentGeneration(db, id);
      Event e;
      e.kind = EventKind::kSnapshot;
      e.snapshot_id = id;
      e.runtime_image_id = snap->runtime_image_id;
      e.outcome = "deleted";
      detail::InsertEvent(db, e);
      return Status::Ok();
    });
    if (!st.ok()) return st;
    state_cv_.notify_all();
    spdlog::info("snapshot {}: deleted", id);
    if (shared_) shared_->Forget(id);  // its repository generation is no longer in use here
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
        detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<std::vector<detail::CollectableGeneration>> {
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
      FCWARM_FAILPOINT("snapshot.gc");      // files gone, the generation not yet recorded `removed`
      (void)detail::DbOf(store_).Do([&](SQLite::Database& db) {
        detail::SetGenerationStatus(db, snapshot_id, number, detail::GenerationStatus::kRemoved);
      });
      spdlog::info("gc: removed generation {} of snapshot {} ({})", number, snapshot_id, dir.string());
    }
    if (report.removed_generations > 0) {
      Event e;
      e.kind = EventKind::kGc;
      e.outcome = "removed";
      e.message = std::to_string(report.removed_generations) + " generation(s), " +
                  std::to_string(report.freed_bytes) + " bytes";
      internal::Emit(store_, e);
    }
    return report;
  }

  Result<RuntimeSnapshot> PinGeneration(const std::string& snapshot_id, const std::string& vm_id) {
    std::lock_guard gc(gc_mu_);
    return detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Result<RuntimeSnapshot> {
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
    auto vmm_facts = vmm->HostCompatibility();
    if (!vmm_facts.ok()) return vmm_facts.status();
    auto host = internal::HostFacts();  // the host's part is the core's, the same for every backend
    if (!host.ok()) return host.status();
    std::map<std::string, std::string> c = *vmm_facts;
    for (const auto& [name, value] : *host) c[name] = value;
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

  Result<std::vector<RepositoryGeneration>> ListRepository() {
    if (!shared_) return Status::FailedPrecondition("no snapshot repository is configured (--snapshot-repository)");
    return shared_->List();
  }
  Result<RepositoryGcReport> CollectRepository(const RepositoryGcOptions& options) {
    if (!shared_) return Status::FailedPrecondition("no snapshot repository is configured (--snapshot-repository)");
    return shared_->Gc(options);
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
      bool settled = false;
      BuildOutcome outcome = RunBuild(job, &settled);
      if (!settled) {
        std::lock_guard lock(mu_);
        ReleaseLocked(job);
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

  // ---- builds -------------------------------------------------------------------
  //
  // A build is a chain of named phases, like firecracker-go-sdk's Handlers list: each phase is a function
  // that returns a Status, the chain stops at the first error, and entering a phase records the time spent
  // in the previous one under that phase's name. A failure is reported naming the phase it happened in.

  // What one build works on; the phases fill it in as they go.
  struct Build {
    explicit Build(const Job& j) : job(j) {}
    const Job& job;
    RuntimeImage image;
    int64_t generation = 0;
    fs::path snap_dir;   // <root>/<image>/<snapshot>
    fs::path final_dir;  // snap_dir/gen-<N>
    fs::path tmp_dir;    // snap_dir/.tmp-gen-<N>, renamed to final_dir when published
    fs::path work_dir;   // the build VM's work directory
    std::string owner;   // owner of the build VM's processes in the store
    std::shared_ptr<Vmm> vmm;
    std::pair<std::string, std::map<std::string, std::string>> key;  // compatibility key, components
    std::unique_ptr<Vm> vm;
    std::vector<SnapshotFile> files;
    json::object manifest;  // manifest.json as written (also the repository metadata's base)
    std::string manifest_digest;
    std::vector<std::string> preload;  // container images to pull (docker runtime images only)
    NetworkIdentity net;               // the build VM's network identity; index < 0: none
    std::vector<std::string> images;   // what the guest's Docker daemon holds at snapshot time
    std::vector<ParkedContainer> parked;  // started containers waiting for a command (parking)
    bool deleted_meanwhile = false;
    bool settled = false;  // its terminal state is committed and it no longer counts as in flight
    // With a snapshot repository or coordination (docs/multi-host.md):
    std::string repo_key;                    // what another node's generation must match
    bool fetched = false;                    // the files came from the repository: no build VM
    std::string fetched_generation;          // the repository generation they came from
    std::unique_ptr<coord::BuildLock> lock;  // this node builds repo_key (released after publishing)
    Timings shared_timings;                  // wait_for_build, fetch
  };

  struct BuildStep {
    BuildPhase phase;
    Status (Impl::*run)(Build&);
  };

  // The chain, in order. The first step runs while the snapshot is still `queued`.
  static const std::vector<BuildStep>& BuildSteps() {
    static const std::vector<BuildStep> kSteps = {
        {BuildPhase::kQueued, &Impl::PrepareBuild},       // generation record, directories, backend, key
        {BuildPhase::kFetching, &Impl::ObtainShared},     // repository/coordination only: wait, fetch
        {BuildPhase::kBooting, &Impl::BootBuildVm},       // cold boot
        {BuildPhase::kWaitingRuntime, &Impl::WaitReady},  // agent, then runtime check
        {BuildPhase::kPreloading, &Impl::PreloadImages},  // docker: identity + pulls, then the image list
        {BuildPhase::kParking, &Impl::ParkContainers},    // docker: one started, waiting container per image
        {BuildPhase::kQuiescing, &Impl::QuiesceGuest},    // guest drops per-boot state
        {BuildPhase::kPausing, &Impl::PauseVm},           // vCPUs stop
        {BuildPhase::kSnapshotting, &Impl::SnapshotVm},   // state to disk, build VM stopped
        {BuildPhase::kVerifying, &Impl::WriteManifest},   // fsync + XXH3 of every file, manifest.json
        {BuildPhase::kPublishing, &Impl::Publish},        // rename() into place, commit the generation
    };
    return kSteps;
  }

  static Status Cancelled() { return Status::Unavailable("cancelled: fcwarm shut down during the build"); }

  // Runs the chain. `phase` ends as the phase that failed (or the last one); `timings` gets the duration of
  // every phase after `queued` that was left, and of the last one when the chain succeeds.
  Status RunBuildSteps(Build& b, BuildPhase& phase, Timings& timings) {
    auto t_phase = std::chrono::steady_clock::now();
    for (const BuildStep& step : BuildSteps()) {
      if (step.phase == BuildPhase::kFetching && !shared_) continue;
      // A fetched generation is complete: no build VM (its files are hashed and published like a build's).
      if (b.fetched && step.phase > BuildPhase::kFetching && step.phase < BuildPhase::kVerifying) continue;
      if (step.phase != phase) {
        if (phase != BuildPhase::kQueued) timings[std::string(ToString(phase))] = util::MsSince(t_phase);
        phase = step.phase;
        t_phase = std::chrono::steady_clock::now();
        if (auto st = EnterPhase(b.job.snapshot_id, phase); !st.ok()) return st;
      }
      if (auto st = RunBuildStep(step, b); !st.ok()) return st;
    }
    timings[std::string(ToString(phase))] = util::MsSince(t_phase);
    return Status::Ok();
  }

  // A step; an exception from a dependency (std::filesystem, Boost.JSON) fails the build like an error.
  Status RunBuildStep(const BuildStep& step, Build& b) {
    try {
      return (this->*step.run)(b);
    } catch (const std::exception& e) {
      return Status::Internal(std::string("build failed: ") + e.what());
    }
  }

  // Records the phase the build enters; gives up (cancelled) when the manager is shutting down.
  Status EnterPhase(const std::string& id, BuildPhase phase) {
    if (Stopping()) return Cancelled();
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetSnapshotPhase(db, id, phase, util::NowMillis()); });
    state_cv_.notify_all();
    return Status::Ok();
  }

  // queued: the generation's record and directories, the backend, the compatibility key.
  Status PrepareBuild(Build& b) {
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) {
      detail::InsertGeneration(db, b.job.snapshot_id, b.generation, b.final_dir.string(), util::NowMillis());
    });
    util::RemoveTree(b.tmp_dir);
    util::RemoveTree(b.work_dir);
    if (auto st = util::MakeDirs(b.tmp_dir); !st.ok()) return st;
    if (auto st = util::MakeDirs(b.work_dir); !st.ok()) return st;
    b.vmm = vmms_.Find(b.image.backend);
    if (!b.vmm) return Status::Unavailable("backend '" + b.image.backend + "' is not available");
    auto key = CompatibilityKeyFor(b.image);
    if (!key.ok()) return key.status();
    b.key = *key;
    b.preload = PreloadList(b.image);
    if (!b.preload.empty() && !opts_.network.allocate_network) {
      return Status::FailedPrecondition(
          "preload_images: build VMs get no network (allocate_network is off), so "
          "they cannot pull");
    }
    return Status::Ok();
  }

  // fetching: with coordination, wait while another node builds the same thing (or take the build lock); with
  // a repository, fetch its newest generation instead of building. Never fails the build: what went wrong is
  // an event (kind `repository`) and the node builds itself.
  Status ObtainShared(Build& b) {
    b.repo_key = internal::SharedSnapshots::RepoKey(b.key.first, b.image, b.preload);
    auto r = shared_->Obtain(b.job.snapshot_id, b.repo_key, b.tmp_dir, [this] { return Stopping(); },
                             SharedEmitter(b));
    if (Stopping()) return Cancelled();
    b.lock = std::move(r.lock);
    b.shared_timings = r.timings;
    if (!r.fetched) return Status::Ok();
    try {
      auto meta = json::parse(r.metadata_json).as_object();
      if (const auto* v = meta.if_contains("images")) b.images = util::StringListFromJson(json::serialize(*v));
      if (const auto* v = meta.if_contains("parked")) b.parked = util::ParkedFromJson(json::serialize(*v));
    } catch (const std::exception& e) {
      // The repository verified the files; metadata it cannot read only costs this node a build.
      SharedEmitter(b)({"fetch_failed", "generation " + r.generation + ": unreadable metadata (" + e.what() +
                                            "); building here", {}});
      std::error_code ec;
      for (const auto& f : fs::directory_iterator(b.tmp_dir, ec)) fs::remove_all(f.path(), ec);
      return Status::Ok();
    }
    b.fetched = true;
    b.fetched_generation = r.generation;
    return Status::Ok();
  }

  // Writes a repository/coordination event of the build's snapshot (and a log line).
  std::function<void(internal::SharedEvent)> SharedEmitter(const Build& b) {
    return [this, snapshot_id = b.job.snapshot_id, image_id = b.job.image_id](internal::SharedEvent ev) {
      bool bad = ev.outcome.find("failed") != std::string::npos || ev.outcome.find("unavailable") !=
                                                                       std::string::npos ||
                 ev.outcome == "wait_timed_out";
      if (bad) {
        spdlog::warn("snapshot {}: {}: {}", snapshot_id, ev.outcome, ev.message);
      } else {
        spdlog::info("snapshot {}: {}: {}", snapshot_id, ev.outcome, ev.message);
      }
      Event e;
      e.kind = EventKind::kRepository;
      e.snapshot_id = snapshot_id;
      e.runtime_image_id = image_id;
      e.outcome = ev.outcome;
      e.message = ev.message;
      e.timings = ev.timings;
      internal::Emit(store_, e);
    };
  }

  // After a local build is published here: upload it to the repository (the build lock is held meanwhile, so
  // that waiting nodes fetch it), then release the lock.
  void PublishShared(Build& b) {
    if (!shared_) return;
    if (b.fetched) {
      shared_->NoteInUse(b.job.snapshot_id, b.repo_key, b.fetched_generation);
    } else {
      // The local manifest (compatibility, shape, images, parked containers...) without its file list (the
      // repository manifest has its own), plus what the repository key was made of.
      json::object meta = b.manifest;
      meta.erase("files");
      meta["runtime_image"] = b.image.name;
      meta["runtime_check"] = b.image.runtime_check.kind;
      meta["preload"] = json::value_from(b.preload);
      shared_->Publish(b.repo_key, b.job.snapshot_id, b.final_dir, b.files, json::serialize(meta),
                       SharedEmitter(b));
    }
    if (b.lock) (void)b.lock->Release();
    b.lock.reset();
  }

  // booting: a cold boot of the build VM.
  Status BootBuildVm(Build& b) {
    LaunchSpec spec;
    // The work directory is named after the VM (a fresh UUID), so that after a crash reconciliation can tell
    // the backends which build VM's namespace to remove.
    spec.vm_id = b.work_dir.filename().string();
    spec.image = b.image;
    spec.work_dir = b.work_dir.string();
    spec.network.hostname = "fcwarm-build";
    // Only a build VM that pulls gets a network identity (docs/architecture.md, "Preloaded images"): an
    // address from the pool the clones use, and the clones' egress rules and resolvers.
    if (!b.preload.empty()) {
      auto st = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
        return internal::AllocateAddress(db, pool_base_, opts_.network.address_pool_size, b.owner, &b.net);
      });
      if (!st.ok()) return st.WithContext("address of the build VM");
      b.net.hostname = spec.network.hostname;
      b.net.dns = guest_net_.dns;
      spec.network = b.net;
      spec.network.egress = guest_net_.egress;
      spec.network.egress_allow = guest_net_.egress_allow;
      spec.network.egress_deny = guest_net_.egress_deny;
      spec.network.dns = guest_net_.dns;
      if (!guest_net_.egress.empty()) used_egress_ = true;
    }
    spec.on_process_started = [this, owner = b.owner](int pid) {
      internal::RecordProcess(store_, pid, "build", owner);
    };
    auto booted = b.vmm->ColdBoot(spec);
    if (!booted.ok()) return booted.status().WithContext("cold boot of the build VM");
    b.vm = std::move(booted).value();
    FCWARM_FAILPOINT("snapshot.build.boot");  // the build VM runs
    return Status::Ok();
  }

  // waiting_runtime: the same waits RestoreEngine uses (agent, then runtime check), given up on shutdown.
  Status WaitReady(Build& b) {
    auto stopping = [this] { return Stopping(); };
    auto agent = internal::WaitForAgent(*b.vm, opts_.agent_timeout, opts_.poll_interval, stopping);
    if (Stopping()) return Cancelled();
    if (!agent.ok()) return agent.status();
    auto ready = internal::WaitForRuntime(*b.vm, b.image.runtime_check, opts_.runtime_timeout,
                                          opts_.poll_interval, stopping);
    if (Stopping()) return Cancelled();
    FCWARM_FAILPOINT_INTO("snapshot.build.wait", ready);  // agent and runtime answered
    return ready;
  }

  // preloading (container runtime images): the build VM that pulls gets its identity (address, resolvers,
  // registry settings; the same request a clone gets), pulls each preload image the daemon lacks, then the
  // daemon's image list is what the snapshot holds. A pull error fails the build with Docker's message.
  Status PreloadImages(Build& b) {
    if (b.image.runtime_check.kind != "docker") return Status::Ok();
    if (!b.preload.empty()) {
      IdentityRequest id = internal::IdentityFor(b.net, guest_net_, /*docker=*/true);
      auto r = b.vm->guest().SetIdentity(id, std::chrono::milliseconds(30000));
      if (!r.ok()) return r.status().WithContext("identity of the build VM");
    }
    docker::Client client(std::make_unique<docker::GuestTransport>(b.vm->guest()), {});
    docker::Client puller(std::make_unique<docker::GuestTransport>(b.vm->guest()),
                          {"v1.41", opts_.pull_timeout});
    for (const auto& ref : b.preload) {
      if (Stopping()) return Cancelled();
      auto has = client.HasImage(ref);
      if (!has.ok()) return has.status().WithContext("preload " + ref);
      if (*has) {
        spdlog::info("snapshot {}: preload {}: the runtime image has it already", b.job.snapshot_id, ref);
        continue;
      }
      auto t = std::chrono::steady_clock::now();
      auto pulled = puller.PullChecked(ref);
      if (!pulled.ok()) return pulled.status().WithContext("preload " + ref);
      spdlog::info("snapshot {}: preloaded {} ({} layer(s), {} bytes) in {:.0f} ms", b.job.snapshot_id, ref,
                   pulled->layers, pulled->bytes, util::MsSince(t));
    }
    auto images = client.ListImages();
    if (!images.ok()) return images.status().WithContext("images of the snapshot");
    b.images = std::move(images).value();
    return Status::Ok();
  }

  // parking (container runtime images with preload images): for each preload image, one container whose
  // entrypoint is the guest's fcwarm-launch, created and started, then checked to be waiting on its launch
  // channel (docs/docker-runtime.md, "Parked containers"). A runtime image without the launcher gets none.
  Status ParkContainers(Build& b) {
    if (b.image.runtime_check.kind != "docker" || b.preload.empty() || !opts_.park_containers) return Status::Ok();
    auto& guest = b.vm->guest();
    constexpr std::chrono::milliseconds kExec{30000};
    auto run = [&](std::vector<std::string> argv) -> Status {
      ExecRequest er;
      er.argv = std::move(argv);
      er.timeout = kExec;
      auto r = guest.Exec(er, kExec + std::chrono::seconds(5));
      if (!r.ok()) return r.status();
      if (r->exit_code != 0) {
        return Status::Unavailable(er.argv[0] + " exited with " + std::to_string(r->exit_code) + ": " +
                                   r->stderr_data.substr(0, 200));
      }
      return Status::Ok();
    };
    auto has = [&](const std::string& path) {
      ExecRequest er;
      er.argv = {"test", "-x", path};
      auto r = guest.Exec(er, kExec);
      return r.ok() && r->exit_code == 0;
    };
    if (!has(std::string(internal::kGuestLauncher))) {
      spdlog::info("snapshot {}: the runtime image has no {}: no parked containers", b.job.snapshot_id,
                   internal::kGuestLauncher);
      return Status::Ok();
    }
    // An agent without the `launch` op (or a channel that cannot launch) answers FailedPrecondition; any other
    // answer about a channel that does not exist means the op is there.
    if (auto probe = guest.LaunchWaiting(std::string(internal::kParkedChannels) + "fcwarm-probe",
                                         std::chrono::seconds(10));
        !probe.ok() && probe.status().code() == StatusCode::kFailedPrecondition) {
      spdlog::info("snapshot {}: the guest cannot launch parked containers ({}): no parked containers",
                   b.job.snapshot_id, probe.status().message());
      return Status::Ok();
    }
    docker::Client client(std::make_unique<docker::GuestTransport>(guest), {});
    for (size_t i = 0; i < b.preload.size(); ++i) {
      if (Stopping()) return Cancelled();
      const std::string& ref = b.preload[i];
      ParkedContainer p;
      p.name = "fcwarm-parked-" + std::to_string(i);
      p.image = ref;
      p.channel = std::string(internal::kParkedChannels) + p.name;
      auto image = client.InspectImage(ref);
      if (!image.ok()) return image.status().WithContext("park " + ref);
      p.entrypoint = image->entrypoint;
      p.cmd = image->cmd;
      p.env = image->env;
      p.working_dir = image->working_dir;
      p.user = image->user;
      if (auto st = run({"mkdir", "-p", p.channel}); !st.ok()) return st.WithContext("park " + ref);
      if (auto st = run({"mkfifo", "-m", "0600", p.channel + "/spec", p.channel + "/ack"}); !st.ok()) {
        return st.WithContext("park " + ref);
      }
      docker::ContainerConfig config;
      config.name = p.name;
      config.image = ref;
      config.entrypoint = std::vector<std::string>{"/.fcwarm/launch"};
      config.user = "0";  // the launcher switches to the request's (or the image's) user
      config.labels = {{"org.fcwarm.parked", ref}};
      config.network_mode = "host";
      config.uts_mode = "host";  // the hostname follows the clone's identity
      config.binds = {std::string(internal::kGuestLauncher) + ":/.fcwarm/launch:ro", p.channel + ":/.fcwarm/chan:ro"};
      auto created = client.Create(config);
      if (!created.ok()) return created.status().WithContext("park " + ref);
      p.docker_id = *created;
      if (auto st = client.Start(p.docker_id); !st.ok()) return st.WithContext("park " + ref);
      b.parked.push_back(std::move(p));
    }
    // Every launcher waits on its channel before the snapshot (a probe is ignored by the launcher).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (const auto& p : b.parked) {
      while (true) {
        auto waiting = guest.LaunchWaiting(p.channel, std::chrono::seconds(10));
        if (!waiting.ok()) return waiting.status().WithContext("park " + p.image);
        if (*waiting) break;
        if (auto st = client.Inspect(p.docker_id); st.ok() && st->Exited()) {
          auto logs = client.Logs(p.docker_id);
          return Status::Unavailable("park " + p.image + ": the parked container exited with " +
                                     std::to_string(st->exit_code) +
                                     (logs.ok() ? ": " + logs->stderr_data.substr(0, 300) : std::string()));
        }
        if (std::chrono::steady_clock::now() > deadline) {
          return Status::DeadlineExceeded("park " + p.image + ": its launcher did not wait on " + p.channel +
                                          " within 30 s");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    spdlog::info("snapshot {}: {} parked container(s)", b.job.snapshot_id, b.parked.size());
    return Status::Ok();
  }

  // quiescing: the guest drops per-boot state.
  Status QuiesceGuest(Build& b) {
    return b.vm->guest().Quiesce(std::chrono::milliseconds(30000)).WithContext("quiesce");
  }

  // pausing: the vCPUs stop.
  Status PauseVm(Build& b) {
    Status paused = b.vm->Pause();
    FCWARM_FAILPOINT_INTO("snapshot.build.pause", paused);  // the vCPUs stopped
    return paused.WithContext("pause");
  }

  // snapshotting: the VM's state into the temporary directory; the build VM is no longer needed after that.
  Status SnapshotVm(Build& b) {
    if (auto st = b.vm->Snapshot(b.tmp_dir.string()); !st.ok()) return st.WithContext("snapshot");
    (void)b.vm->Stop(opts_.stop_grace);
    b.vm.reset();
    internal::ForgetProcesses(store_, b.owner);
    ReleaseBuildAddress(b);
    return Status::Ok();
  }

  // verifying: every file fsynced and hashed, then manifest.json written durably.
  Status WriteManifest(Build& b) {
    std::error_code ec;
    std::vector<fs::path> entries;
    for (const auto& e : fs::directory_iterator(b.tmp_dir, ec)) entries.push_back(e.path());
    std::sort(entries.begin(), entries.end());
    for (const auto& p : entries) {
      if (!fs::is_regular_file(p)) {
        return Status::Internal("snapshot produced a non-regular file: " + p.string());
      }
      if (p.filename() == kManifestName) return Status::Internal("backend wrote a file named manifest.json");
      if (auto st = util::FsyncPath(p); !st.ok()) return st;
      auto digest = util::Xxh3File(p);
      if (!digest.ok()) return digest.status();
      SnapshotFile f;
      f.name = p.filename().string();
      f.size = fs::file_size(p);
      f.mtime_ns = util::MtimeNs(p);
      f.xxh3 = *digest;
      b.files.push_back(std::move(f));
    }
    if (b.files.empty()) return Status::Internal("the backend wrote no snapshot files");
    FCWARM_FAILPOINT("snapshot.build.checksum");  // every file fsynced and hashed, no manifest yet
    json::array files;
    for (const auto& f : b.files) {
      files.push_back(json::object{{"name", f.name}, {"size", f.size}, {"xxh3", f.xxh3}});
    }
    json::object comp;
    for (const auto& [k, v] : b.key.second) comp[k] = v;
    json::object manifest{
        {"format", kManifestFormat},
        {"snapshot_id", b.job.snapshot_id},
        {"runtime_image_id", b.job.image_id},
        {"generation", b.generation},
        {"compatibility_key", b.key.first},
        {"compatibility", comp},
        {"vm_shape", json::object{{"vcpus", b.image.shape.vcpus}, {"memory_mib", b.image.shape.memory_mib}}},
        {"agent_protocol", kGuestProtocolVersion},
        {"files", files},
        {"images", json::value_from(b.images)},
        {"parked", json::parse(util::ParkedToJson(b.parked))},
        {"created_at", util::NowMillis()}};
    std::string manifest_text = json::serialize(manifest) + "\n";
    if (auto st = util::WriteFileDurable(b.tmp_dir / kManifestName, manifest_text); !st.ok()) return st;
    b.manifest_digest = util::Xxh3Hex(manifest_text);
    b.manifest = std::move(manifest);
    return Status::Ok();
  }

  // publishing: fsync, rename() into place, fsync the directory, then the new generation in one transaction
  // (retired at once if the snapshot was deleted meanwhile).
  Status Publish(Build& b) {
    if (auto st = util::FsyncPath(b.tmp_dir); !st.ok()) return st;
    util::RemoveTree(b.final_dir);
    std::error_code ec;
    fs::rename(b.tmp_dir, b.final_dir, ec);
    if (ec) return Status::Unavailable("publish " + b.final_dir.string() + ": " + ec.message());
    if (auto st = util::FsyncPath(b.snap_dir); !st.ok()) return st;
    FCWARM_FAILPOINT("snapshot.build.publish");  // renamed into place, the generation not committed
    uint64_t apparent = 0, allocated = 0;
    util::DiskUsage(b.final_dir, &apparent, &allocated);
    detail::PublishedGeneration published{.number = b.generation,
                                          .dir = b.final_dir.string(),
                                          .compatibility_key = b.key.first,
                                          .compatibility = b.key.second,
                                          .size_bytes = apparent,
                                          .disk_bytes = allocated,
                                          .files = b.files,
                                          .manifest_digest = b.manifest_digest,
                                          .images = b.images,
                                          .parked = b.parked,
                                          .origin = b.fetched ? "fetched" : "built"};
    const std::string& id = b.job.snapshot_id;
    return Settle(b, [&] {
      return detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      auto cur = detail::SnapshotById(db, id);
      if (!cur.ok()) return cur.status();
      if (cur->state == SnapshotState::kDeleted) {
        b.deleted_meanwhile = true;
        detail::SetGenerationStatus(db, id, b.generation, detail::GenerationStatus::kRetired);
        return Status::Ok();
      }
      detail::RetireCurrentGeneration(db, id);
      detail::SetGenerationStatus(db, id, b.generation, detail::GenerationStatus::kCurrent);
      detail::PublishSnapshot(db, id, published, util::NowMillis());
      return Status::Ok();
      });
    });
  }

  // Commits a build's terminal state (published, or failed) and, in the same critical section as the
  // single-flight checks of Rebuild(), ends its "in flight" status: a rebuild requested as soon as a waiter sees
  // the new state is queued, never refused or merged into a build that already finished. The job's cleanup
  // (stopping the build VM, removing its work directory) continues after this.
  Status Settle(Build& b, const std::function<Status()>& commit) {
    Status st;
    {
      std::lock_guard lock(mu_);
      st = commit();
      if (st.ok() && !b.settled) {
        ReleaseLocked(b.job);
        b.settled = true;
      }
    }
    state_cv_.notify_all();
    return st;
  }

  void ReleaseLocked(const Job& job) {
    active_snapshots_.erase(job.snapshot_id);
    if (--active_images_[job.image_id] <= 0) active_images_.erase(job.image_id);
  }

  // Runs one build; *settled tells whether it already left the in-flight sets (see Settle()).
  BuildOutcome RunBuild(const Job& job, bool* settled) {
    *settled = false;
    BuildOutcome out;
    out.snapshot_id = job.snapshot_id;
    out.runtime_image_id = job.image_id;
    out.automatic = job.automatic;
    auto t_total = std::chrono::steady_clock::now();

    auto image = detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ImageById(db, job.image_id); });
    auto snap = Get(job.snapshot_id);
    if (!image.ok() || !snap.ok() || snap->state == SnapshotState::kDeleted) {
      out.error = "snapshot or image vanished before the build started";
      out.code = StatusCode::kNotFound;
      return out;
    }
    Build b(job);
    b.image = *image;
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { b.generation = detail::NextGenerationNumber(db, job.snapshot_id); });
    const int64_t gen = b.generation;
    out.generation = gen;
    b.snap_dir = fs::path(opts_.root_dir) / job.image_id / job.snapshot_id;
    b.final_dir = b.snap_dir / ("gen-" + std::to_string(gen));
    b.tmp_dir = b.snap_dir / (".tmp-gen-" + std::to_string(gen));
    b.work_dir = fs::path(opts_.build_dir) / Id::Generate().str();  // named after the build VM (its id)
    b.owner = kBuildOwnerPrefix + job.snapshot_id;

    BuildPhase phase = BuildPhase::kQueued;
    Status result = RunBuildSteps(b, phase, out.timings);
    if (result.ok()) {
      out.timings["total"] = util::MsSince(t_total);
      out.ok = !b.deleted_meanwhile;
      if (b.deleted_meanwhile) {
        out.error = "snapshot was deleted during the build";
        out.code = StatusCode::kFailedPrecondition;
      }
    }

    if (b.vm) {
      (void)b.vm->Stop(opts_.stop_grace);
      b.vm.reset();
    }
    internal::ForgetProcesses(store_, b.owner);
    ReleaseBuildAddress(b);
    util::RemoveTree(b.work_dir);

    if (!result.ok()) {
      util::RemoveTree(b.tmp_dir);
      // Renamed into place but never committed (a failure after Publish(), or the store refused the publishing
      // transaction, e.g. its disk is full): no record points at it, so nothing would ever collect it.
      util::RemoveTree(b.final_dir);
      out.ok = false;
      out.code = result.code();
      // A full disk is the one failure an operator fixes outside fcwarm: the error says so by its code name.
      out.error = std::string("build failed in phase ") + std::string(ToString(phase)) + ": " +
                  (out.code == StatusCode::kResourceExhausted ? "resource_exhausted: " : "") +
                  result.message();
      out.timings["total"] = util::MsSince(t_total);
      auto recorded = Settle(b, [&] {
        return detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
          detail::DeleteGeneration(db, job.snapshot_id, gen);
          detail::RetireCurrentGeneration(db, job.snapshot_id);
          if (auto failures = detail::RecordBuildFailure(db, job.snapshot_id, out.error, util::NowMillis())) {
            out.build_failures = *failures;
          }
          return Status::Ok();
        });
      });
      if (!recorded.ok()) {
        spdlog::error("snapshot {}: cannot record the failed build: {}", job.snapshot_id,
                      recorded.ToString());
      }
      spdlog::warn("snapshot {}: {}", job.snapshot_id, out.error);
    } else if (out.ok) {
      spdlog::info("snapshot {}: generation {} ready in {:.0f} ms ({})", job.snapshot_id, gen,
                   out.timings["total"], b.fetched ? "fetched from the snapshot repository" : "built here");
    }
    for (const auto& [k, v] : b.shared_timings) out.timings[k] = v;
    Event e;
    e.kind = EventKind::kBuild;
    e.snapshot_id = job.snapshot_id;
    e.runtime_image_id = job.image_id;
    e.outcome = out.ok ? "ready" : "failed";
    e.reason = job.automatic ? "automatic" : "requested";
    e.timings = out.timings;
    e.message = out.ok ? "generation " + std::to_string(gen) + (b.fetched ? " (fetched)" : "") : out.error;
    internal::Emit(store_, e);
    if (out.ok) PublishShared(b);
    *settled = b.settled;
    return out;
  }

  // The service-wide list, then the image's own, each reference once (by its normalized form); empty for a
  // runtime image without Docker.
  std::vector<std::string> PreloadList(const RuntimeImage& image) const {
    std::vector<std::string> out;
    if (image.runtime_check.kind != "docker") return out;
    std::set<std::string> seen;
    for (const auto* list : {&opts_.preload_images, &image.preload_images}) {
      for (const auto& ref : *list) {
        auto parsed = ParseImageReference(ref, "preload_images");
        if (seen.insert(parsed.ok() ? parsed->Normalized() : ref).second) out.push_back(ref);
      }
    }
    return out;
  }

  // The service-wide preload list (InvalidArgument naming `preload_images[i]`) and the network build VMs get.
  Status CheckPreloadOptions() {
    if (auto list = internal::CheckPreloadList(opts_.preload_images); !list.ok()) return list.status();
    auto net = internal::ResolveGuestNetwork(opts_.network);
    if (!net.ok()) return net.status().WithContext("network");
    guest_net_ = std::move(net).value();
    pool_base_ = internal::PoolBase(opts_.network.address_pool_base);
    if (pool_base_ == 0) {
      return Status::InvalidArgument("network.address_pool_base: '" +
                                     opts_.network.address_pool_base.substr(0, 64) +
                                     "' is not an IPv4 address");
    }
    return Status::Ok();
  }

  // Frees the build VM's address (idempotent); the VM is stopped.
  void ReleaseBuildAddress(Build& b) {
    if (b.net.index < 0) return;
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::ReleaseAddress(db, b.owner); });
    b.net.index = -1;
  }

  // Addresses held by build VMs of a previous run (a crash mid-build); their processes are gone by now.
  void ReleaseBuildAddresses() {
    int released = 0;
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { released = detail::ReleaseAddressesWithPrefix(db, kBuildOwnerPrefix); });
    if (released > 0) spdlog::warn("reconcile: released {} address(es) of interrupted builds", released);
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
    (void)detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      for (const auto& snap : detail::ListSnapshots(db, {"", SnapshotState::kCreating, false})) {
        const std::string& id = snap.id;
        const std::string& image = snap.runtime_image_id;
        detail::AbandonBuild(db, id, "interrupted", util::NowMillis());
        detail::RetireCurrentGeneration(db, id);
        Event e;
        e.kind = EventKind::kReconcile;
        e.snapshot_id = id;
        e.runtime_image_id = image;
        e.outcome = "unhealthy";
        e.reason = "interrupted";
        e.message = "build interrupted by a restart";
        detail::InsertEvent(db, e);
        report_.interrupted_builds++;
        report_.interrupted_snapshots.push_back(id);
      }
      detail::RetireBuildingGenerations(db);
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
    std::vector<std::string> build_vms;  // a build VM's id is its work directory's name
    for (const auto& w : fs::directory_iterator(opts_.build_dir, ec)) {
      if (w.is_directory()) build_vms.push_back(w.path().filename().string());
      util::RemoveTree(w.path());
      report_.removed_temp_dirs++;
    }
    // Running VMs of the previous run stay for the RestoreEngine to re-adopt (live restore): their processes,
    // records, addresses, work directories and host networking are left alone here.
    std::set<std::string> kept_owners;
    if (opts_.leave_running_vms) {
      (void)detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
        for (const auto& vm : detail::LiveVms(db)) {
          if (vm.state != VmState::kRunning) continue;
          kept_owners.insert("vm:" + vm.id);
          if (!vm.instance_id.empty()) kept_owners.insert("vm:" + vm.instance_id);
        }
        return Status::Ok();
      });
    }
    // 3. VMM processes of the previous run.
    if (opts_.reconcile_processes) {
      (void)detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
        for (const auto& p : detail::RecordedProcesses(db)) {
          if (kept_owners.count(p.owner_id)) continue;
          if (p.pid > 1 && util::IsSameProcess(p.pid, p.start_time)) {
            spdlog::warn("reconcile: killing leftover {} process {} of {}", p.role, p.pid, p.owner_id);
            ::kill(p.pid, SIGKILL);
            util::WaitFor(p.pid, std::chrono::milliseconds(2000));
            report_.killed_processes++;
          }
        }
        if (kept_owners.empty()) {
          detail::ForgetAllProcesses(db);
        } else {
          for (const auto& p : detail::RecordedProcesses(db)) {
            if (!kept_owners.count(p.owner_id)) detail::ForgetProcesses(db, p.owner_id);
          }
        }
        return Status::Ok();
      });
    }
    // 4. VMs the previous run owned: their processes are gone, release what they held.
    std::vector<LostVm> lost;
    (void)detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      lost.clear();
      for (const auto& vm : detail::LiveVms(db)) {
        if (opts_.leave_running_vms && vm.state == VmState::kRunning) continue;
        const std::string& id = vm.id;
        const std::string& dir = vm.work_dir;
        LostVm& l = lost.emplace_back();
        // Host resources are named after the instance id (a VM taken from the clone pool has a new record id).
        l.id = vm.instance_id.empty() ? id : vm.instance_id;
        l.index = detail::AddressIndexOf(db, id);  // names a Firecracker TAP; read before it is released
        if (auto image = detail::ImageById(db, vm.runtime_image_id); image.ok()) l.backend = image->backend;
        if (vm.state == VmState::kPooled) {  // never handed out: nothing of it is lost to a caller
          detail::SetVmState(db, id, VmState::kDestroyed, "pooled clone of a previous run (owner process restarted)",
                             util::NowMillis());
          report_.released_pooled_vms++;
        } else {
          detail::SetVmState(db, id, VmState::kLost, "owner process restarted", util::NowMillis());
          report_.lost_vms++;
        }
        detail::ReleaseAddress(db, id);
        if (!dir.empty() && fs::path(dir).filename() == l.id) util::RemoveTree(dir);
      }
      return Status::Ok();
    });
    // 5. Host networking left behind: rules, namespaces, veths, TAPs.
    SweepHostNetwork(lost, build_vms);
    if (report_.interrupted_builds || report_.killed_processes || report_.lost_vms ||
        report_.removed_temp_dirs || report_.released_networks || report_.released_pooled_vms) {
      spdlog::warn(
          "reconcile: {} interrupted build(s), {} temp dir(s) removed, {} process(es) killed, {} VM(s) lost, "
          "{} pooled clone(s) released, host networking of {} VM(s) removed",
          report_.interrupted_builds, report_.removed_temp_dirs, report_.killed_processes, report_.lost_vms,
          report_.released_pooled_vms, report_.released_networks);
    }
    (void)CollectGarbage();
  }

  // A VM of the previous run, as step 4 of Reconcile() found it.
  struct LostVm {
    std::string id;
    int64_t index = -1;   // its address allocation index, -1 when none
    std::string backend;  // its image's backend, empty when the image is gone
  };

  // What a crashed run left on the host for its VMs (docs/networking.md, "Cleanup and crash recovery"):
  //  - the egress and published-port rules of every VM this store knows that is not live. After step 4 that
  //    is every VM of the store (one store has one owner process: Service's lock), so rules leaked by an
  //    earlier failed release go too. Rules of VMs the store does not know (another fcwarm process's, with
  //    its own store) and of live VMs are never touched;
  //  - the network namespaces, veths and TAPs the backends name from a lost VM's id or allocation index, and
  //    the namespaces of interrupted builds' VMs (`build_vms`: their ids; they have no rules).
  void SweepHostNetwork(std::vector<LostVm> lost, const std::vector<std::string>& build_vms) {
    for (const auto& id : build_vms) lost.push_back(LostVm{id, -1, ""});
    std::set<std::string> released;
    bool known_vms = false;
    (void)detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
      known_vms = detail::AnyVm(db);
      return Status::Ok();
    });
    const net::IptablesOptions iptables;  // what the backends apply with
    auto rules = known_vms ? net::ListRules(iptables)
                           : Result<std::vector<net::RuleLine>>(std::vector<net::RuleLine>());
    if (!rules.ok()) {
      spdlog::debug("reconcile: no iptables rule sweep: {}", rules.status().ToString());
    } else {
      std::set<std::string> tagged, ours;
      for (const auto& r : *rules) {
        if (auto id = net::VmIdOfTag(iptables, r.comment); !id.empty()) tagged.insert(std::move(id));
      }
      if (!tagged.empty()) {
        (void)detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
          for (const auto& id : tagged) {
            auto vm = detail::VmByInstanceId(db, id);  // rules are tagged with the instance id
            if (vm.ok() && !detail::IsLiveState(vm->state)) ours.insert(id);
          }
          // Build VMs that preloaded images had rules too; their ids are their work directories' names.
          for (const auto& id : build_vms) {
            if (tagged.count(id)) ours.insert(id);
          }
          return Status::Ok();
        });
      }
      if (!ours.empty()) {
        auto swept = net::DeleteVmRules(iptables, ours);
        if (!swept.ok()) {
          spdlog::warn("reconcile: cannot remove the iptables rules of {} VM(s): {}", ours.size(),
                       swept.status().ToString());
        } else {
          for (const auto& id : *swept) {
            spdlog::info("reconcile: removed the leftover egress/port rules of vm {}", id);
            released.insert(id);
          }
        }
      }
    }
    for (const auto& vm : lost) {
      std::vector<std::shared_ptr<Vmm>> backends;
      if (auto b = vm.backend.empty() ? nullptr : vmms_.Find(vm.backend)) {
        backends.push_back(std::move(b));
      } else {
        for (const auto& kind : vmms_.Kinds()) backends.push_back(vmms_.Find(kind));
      }
      for (const auto& b : backends) {
        auto* leftovers = dynamic_cast<HostLeftovers*>(b.get());
        if (!leftovers) continue;
        auto n = leftovers->RemoveVmLeftovers(vm.id, vm.index);
        if (!n.ok()) {
          spdlog::warn("reconcile: cannot remove the {} network devices of vm {}: {}", b->Kind(), vm.id,
                       n.status().ToString());
        } else if (*n > 0) {
          spdlog::info("reconcile: removed {} leftover network device(s) of vm {}", *n, vm.id);
          released.insert(vm.id);
        }
      }
    }
    report_.released_networks += static_cast<int>(released.size());
  }

  Store& store_;
  VmmRegistry& vmms_;
  SnapshotManagerOptions opts_;
  std::unique_ptr<internal::SharedSnapshots> shared_;  // repository and coordination, or null

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
  internal::GuestNetwork guest_net_;  // egress, resolvers and registry settings of build VMs that pull
  uint32_t pool_base_ = 0;            // the address pool, shared with the RestoreEngine
  std::atomic<bool> used_egress_{false};
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
Result<std::vector<RepositoryGeneration>> SnapshotManager::ListRepository() { return impl_->ListRepository(); }
Result<RepositoryGcReport> SnapshotManager::CollectRepository(const RepositoryGcOptions& options) {
  return impl_->CollectRepository(options);
}
const SnapshotManagerOptions& SnapshotManager::options() const { return impl_->options(); }

}  // namespace fcwarm
