/// \file
/// \brief SnapshotManager: builds, lists, rebuilds and deletes runtime snapshots.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fcwarm/options.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief Filter for SnapshotManager::List().
struct SnapshotFilter {
  std::string runtime_image_id;        ///< Only this image, or empty.
  std::optional<SnapshotState> state;  ///< Only this state.
  bool include_deleted = false;        ///< Include soft-deleted snapshots.
};

/// \brief The outcome of one build, passed to build listeners.
struct BuildOutcome {
  std::string snapshot_id;       ///< The snapshot built.
  std::string runtime_image_id;  ///< Its image.
  bool ok = false;               ///< True when the build published a generation.
  int64_t generation = 0;        ///< The generation built.
  int64_t build_failures = 0;    ///< Consecutive failed builds after this one (0 on success).
  std::string error;             ///< Error text on failure.
  /// \brief Code of the failure, kOk on success; kResourceExhausted when a file system filled up (the error
  /// then reads "build failed in phase <phase>: resource_exhausted: ...").
  StatusCode code = StatusCode::kOk;
  Timings timings;               ///< Per-phase durations.
  bool automatic = false;        ///< True when HealthTracker requested the build.
};

/// \brief What startup reconciliation found and repaired.
struct ReconcileReport {
  int interrupted_builds = 0;   ///< Snapshots left `creating` by a crash, now `unhealthy`.
  std::vector<std::string> interrupted_snapshots;  ///< Their ids.
  int removed_temp_dirs = 0;    ///< Temporary generation/work directories removed.
  int killed_processes = 0;     ///< VMM processes of the previous run killed.
  int lost_vms = 0;             ///< VMs of the previous run marked `lost`.
  /// \brief Pooled clones of the previous run (RestoreOptions::pool), never handed out: marked `destroyed`, their
  /// address, work directory and host networking released.
  int released_pooled_vms = 0;
  /// \brief VMs of this store whose leftover host networking was removed: egress and published-port rules
  /// (docs/networking.md), network namespaces, veths, TAPs.
  int released_networks = 0;
};

/// \brief What a garbage collection removed.
struct GcReport {
  int removed_generations = 0;  ///< Generation directories deleted.
  uint64_t freed_bytes = 0;     ///< Bytes freed.
};

/// \brief A generation in the shared snapshot repository (docs/multi-host.md).
struct RepositoryGeneration {
  std::string repo_key;    ///< The repository key it was published under.
  std::string generation;  ///< Its id (time-sortable).
  std::string node;        ///< The node that built and published it.
  int64_t created_at = 0;  ///< When it was published, Unix milliseconds.
  uint64_t raw_bytes = 0;  ///< Sum of its files' sizes.
  std::string runtime_image;  ///< The publisher's runtime image name (from its metadata), or "".
};

/// \brief Retention of SnapshotManager::CollectRepository().
struct RepositoryGcOptions {
  /// \brief Generations kept per repository key, newest first. Default: 2.
  unsigned keep_newest = 2;
  /// \brief Generations younger than this are kept. Default: 24 h.
  std::chrono::milliseconds keep_newer_than{86400000};
  /// \brief Report what would be deleted, delete nothing. Default: false.
  bool dry_run = false;
};

/// \brief What SnapshotManager::CollectRepository() deleted (or would delete).
struct RepositoryGcReport {
  bool dry_run = false;  ///< RepositoryGcOptions::dry_run.
  /// \brief Generations deleted: beyond retention and used by no live node record.
  std::vector<RepositoryGeneration> deleted;
  /// \brief Generations kept.
  std::vector<RepositoryGeneration> kept;
  std::vector<std::string> nodes;  ///< Nodes whose records of what they use were honoured.
  uint64_t chunks_deleted = 0;     ///< Chunks no kept generation references, deleted.
  uint64_t chunk_bytes_deleted = 0;  ///< Their stored (compressed) bytes.
  uint64_t chunks_kept = 0;        ///< Chunks kept.
};

/// \brief Owns runtime snapshots: asynchronous builds on a worker pool, list/get, rebuild, soft delete, garbage
/// collection of generations no live VM references, and startup reconciliation.
///
/// Files: `<root_dir>/<image_id>/<snapshot_id>/gen-<N>/` holds one build ("generation"); it is written under
/// a `.tmp-` name, fsynced and renamed into place, and never modified afterwards.
///
/// Thread safety: safe for concurrent use. Listeners are called on build worker threads.
class SnapshotManager {
 public:
  /// \brief Callback receiving every build outcome.
  using BuildListener = std::function<void(const BuildOutcome&)>;

  /// \brief Creates the manager and runs startup reconciliation (see ReconcileReport).
  /// \param store The store; must outlive the manager.
  /// \param vmms Backends; must outlive the manager.
  /// \param options Options.
  /// \return The manager; InvalidArgument naming the option (`preload_images[i]`, `network.egress`, ...);
  /// Unavailable when the root directory cannot be created.
  static Result<std::unique_ptr<SnapshotManager>> Create(Store& store, VmmRegistry& vmms,
                                                         SnapshotManagerOptions options);
  /// \brief Stops accepting builds, cancels queued ones (they end `unhealthy`, "cancelled") and waits for
  /// running builds.
  ~SnapshotManager();

  /// \brief Starts building a new snapshot of an image; returns at once with state `creating`.
  /// \param runtime_image_id The image id.
  /// \return The new snapshot; InvalidArgument; NotFound (image); ResourceExhausted (limits).
  Result<RuntimeSnapshot> CreateSnapshot(const std::string& runtime_image_id);
  /// \brief Gets a snapshot.
  /// \param id The snapshot id.
  /// \return The snapshot; InvalidArgument; NotFound.
  Result<RuntimeSnapshot> Get(const std::string& id) const;
  /// \brief Lists snapshots, newest first.
  /// \param filter Which snapshots.
  /// \return The snapshots; InvalidArgument for a malformed image id.
  Result<std::vector<RuntimeSnapshot>> List(const SnapshotFilter& filter) const;
  /// \brief Schedules a new generation of an existing (non-deleted) snapshot; the state becomes `creating`.
  /// A rebuild of a snapshot already `creating` is a no-op that returns it.
  /// \param id The snapshot id.
  /// \return The snapshot; InvalidArgument; NotFound; FailedPrecondition (deleted).
  Result<RuntimeSnapshot> Rebuild(const std::string& id);
  /// \brief Soft-deletes a snapshot; its files are collected once no live VM references them.
  /// \param id The snapshot id.
  /// \return Ok; InvalidArgument; NotFound.
  Status Delete(const std::string& id);
  /// \brief Blocks (on a condition variable) while the snapshot is `creating`, at most `timeout`.
  /// \param id The snapshot id.
  /// \param timeout Longest wait.
  /// \return The snapshot as it is when the wait ends (may still be `creating`); NotFound.
  Result<RuntimeSnapshot> WaitWhileCreating(const std::string& id, std::chrono::milliseconds timeout) const;
  /// \brief Removes generation directories that are retired and referenced by no live VM.
  /// \return What was removed.
  Result<GcReport> CollectGarbage();
  /// \brief What the startup reconciliation did.
  const ReconcileReport& reconcile_report() const;
  /// \brief Registers a build listener.
  /// \param listener Called after every build, on a worker thread.
  /// \return A token for RemoveBuildListener().
  int AddBuildListener(BuildListener listener);
  /// \brief Unregisters a listener; after return it is not called again.
  /// \param token The token from AddBuildListener().
  void RemoveBuildListener(int token);
  /// \brief Schedules a rebuild on behalf of HealthTracker (single-flight per image: no-op while a build of
  /// that image is queued or running).
  /// \param id The snapshot id.
  /// \return True if a build was scheduled.
  bool RequestAutomaticRebuild(const std::string& id);
  /// \brief Pins the current generation of a ready snapshot for a VM so garbage collection keeps its files.
  /// \param snapshot_id The snapshot.
  /// \param vm_id The VM (its record must exist).
  /// \return The snapshot as pinned; FailedPrecondition when it is not ready any more.
  Result<RuntimeSnapshot> PinGeneration(const std::string& snapshot_id, const std::string& vm_id);
  /// \brief Compatibility key (and components) a snapshot of `image` would have on this host now.
  /// \param image The image.
  /// \return Digest and components; Unavailable when the backend cannot be queried or a file is unreadable.
  Result<std::pair<std::string, std::map<std::string, std::string>>> CompatibilityKeyFor(
      const RuntimeImage& image) const;
  /// \brief Number of builds queued or running.
  int ActiveBuilds() const;

  /// \brief The generations in the shared snapshot repository, sorted by key then id. FailedPrecondition
  /// without a repository (SnapshotManagerOptions::repository); the store's error when it cannot be listed.
  Result<std::vector<RepositoryGeneration>> ListRepository();
  /// \brief Deletes repository generations beyond `options`' retention that no node records as in use, then
  /// the chunks nothing references any more (docs/multi-host.md). FailedPrecondition without a repository.
  Result<RepositoryGcReport> CollectRepository(const RepositoryGcOptions& options);
  /// \brief The options in force.
  const SnapshotManagerOptions& options() const;

 private:
  class Impl;
  explicit SnapshotManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcwarm
