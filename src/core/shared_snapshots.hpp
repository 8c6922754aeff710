// Private: what SnapshotManager does beyond one host (docs/multi-host.md) — the snapshot repository (publish what
// this node built, fetch what another node built instead of building it) and cluster coordination (one build of
// a repository key at a time, through an etcd lease-backed lock).
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <map>
#include <string>
#include <vector>

#include "fcwarm/options.hpp"
#include "fcwarm/snapshot_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::coord {
class SingleFlight;
class BuildLock;
}  // namespace fcwarm::coord
namespace fcwarm::repo {
class SnapshotRepository;
}

namespace fcwarm::internal {

/// What a build hears from the cluster before it boots anything.
struct ObtainResult {
  /// The generation's files were fetched into the build's directory (verified chunk by chunk and file by file).
  bool fetched = false;
  /// kFetched: the publisher's metadata (a JSON object: images, parked containers, compatibility, node...).
  std::string metadata_json;
  /// kFetched: the repository generation id and the node that built it.
  std::string generation;
  /// \copydoc generation
  std::string built_by;
  /// The build lock, when this node is to build (with coordination); released when the build has published.
  std::unique_ptr<coord::BuildLock> lock;
  /// Durations ("wait_for_build", "fetch") in milliseconds.
  Timings timings;
};

/// A repository or coordination event for the event log (kind `repository`).
struct SharedEvent {
  std::string outcome;  // "fetched", "fetch_failed", "published", "publish_failed", "waited", "wait_timed_out",
                        // "repository_unavailable", "coordination_unavailable"
  std::string message;
  Timings timings;
};

/// The snapshot repository and the coordinator of one SnapshotManager. Thread safe.
class SharedSnapshots {
 public:
  /// Null when neither a repository nor coordination is configured. InvalidArgument naming the option for a
  /// malformed URL, endpoint, node id or credentials that cannot be read; an unreachable or refusing endpoint is
  /// no error here (the node builds locally and says why; Check() reports it).
  static Result<std::unique_ptr<SharedSnapshots>> Create(const SnapshotManagerOptions& opts);
  ~SharedSnapshots();

  /// The repository key of a build: what must match for another node's generation to be used here — the
  /// compatibility key (host, VMM, guest files, shape, agent protocol), the runtime check kind and the preload
  /// list (its images and parked containers are in the snapshot).
  static std::string RepoKey(const std::string& compatibility_key, const RuntimeImage& image,
                             const std::vector<std::string>& preload);

  /// Before a build boots: with coordination, takes the build lock of `repo_key` or waits (at most
  /// CoordinationOptions::wait_for_build) while another node holds it, until its generation is published; then,
  /// with a repository, fetches the newest generation of `repo_key` into `dir` (an empty directory). Never
  /// fails: what went wrong is reported through `emit` and the node builds itself.
  /// A rebuild of `snapshot_id` never fetches the generation that snapshot already came from (a rebuild wants
  /// a new one: the old one may be what failed); it builds instead.
  ObtainResult Obtain(const std::string& snapshot_id, const std::string& repo_key, const std::filesystem::path& dir,
                      const std::function<bool()>& stopping, const std::function<void(SharedEvent)>& emit);

  /// After this node built and published a generation locally: uploads it (when publishing is on), then
  /// records it as in use by this node. Reported through `emit`.
  void Publish(const std::string& repo_key, const std::string& snapshot_id, const std::filesystem::path& dir,
               const std::vector<SnapshotFile>& files, const std::string& metadata_json,
               const std::function<void(SharedEvent)>& emit);

  /// Records that `snapshot_id` now uses the fetched generation `generation` of `repo_key` (GC keeps it).
  void NoteInUse(const std::string& snapshot_id, const std::string& repo_key, const std::string& generation);
  /// The snapshot no longer uses a repository generation (deleted, or rebuilt locally).
  void Forget(const std::string& snapshot_id);

  /// Every generation in the repository (each manifest read for its node, size and image). FailedPrecondition
  /// without a repository.
  Result<std::vector<RepositoryGeneration>> List();
  /// Repository GC with a retention rule (SnapshotRepository::Gc). FailedPrecondition without a repository.
  Result<RepositoryGcReport> Gc(const RepositoryGcOptions& options);

  /// One request to the repository and one to etcd: OK, or why not (for startup logs and /v1/health).
  Status Check();
  /// This node's id.
  const std::string& node_id() const { return node_id_; }
  /// The repository's URL, or "".
  const std::string& repository_url() const { return opts_.repository.url; }
  /// The coordination URL, or "".
  const std::string& coordination_url() const { return opts_.coordination.url; }
  /// The repository, or null.
  repo::SnapshotRepository* repository() { return repo_.get(); }

 private:
  explicit SharedSnapshots(SnapshotManagerOptions opts);
  void RecordUse();

  SnapshotManagerOptions opts_;
  std::string node_id_;
  std::unique_ptr<repo::SnapshotRepository> repo_;
  std::unique_ptr<coord::SingleFlight> single_flight_;
  std::mutex mu_;
  std::map<std::string, std::pair<std::string, std::string>> in_use_;  // snapshot id → (repo key, generation)
};

}  // namespace fcwarm::internal
