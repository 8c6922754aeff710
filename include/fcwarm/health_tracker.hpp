/// \file
/// \brief HealthTracker: per-snapshot outcome counts, the unhealthy threshold and automatic rebuilds.
#pragma once

#include <memory>
#include <string>

#include "fcwarm/options.hpp"
#include "fcwarm/snapshot_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm {

/// \brief Health numbers of one snapshot.
struct HealthStats {
  SnapshotState state = SnapshotState::kCreating;  ///< Current state.
  int64_t success_count = 0;         ///< Successful warm restores.
  int64_t failure_count = 0;         ///< Failed warm restores.
  int64_t consecutive_failures = 0;  ///< Failures since the last success.
  int64_t build_failures = 0;        ///< Consecutive failed builds.
  std::string last_error;            ///< Last error, or empty.
  std::optional<int64_t> last_used_at;  ///< Last success, Unix ms.
};

/// \brief Counts warm-restore outcomes per snapshot, marks a snapshot unhealthy after
/// HealthOptions::unhealthy_threshold consecutive failures, and triggers automatic rebuilds: single-flight per
/// image, with capped exponential backoff between failed builds. An incompatible key schedules a rebuild
/// without counting a failure.
///
/// Outcomes belong to the generation the clone was restored from. An outcome of a generation that is no longer
/// the snapshot's current one (a rebuild published a newer one meanwhile) never changes the current generation's
/// health: it is logged and ignored here (the restore's own event keeps it).
///
/// Thread safety: safe for concurrent use; counts are updated atomically in the store, so N concurrent failures
/// cross the threshold exactly once.
class HealthTracker {
 public:
  /// \brief Creates the tracker and subscribes to build outcomes.
  /// \param store The store; must outlive the tracker.
  /// \param snapshots The snapshot manager; must outlive the tracker.
  /// \param options Options.
  HealthTracker(Store& store, SnapshotManager& snapshots, HealthOptions options);
  /// \brief Unsubscribes and cancels pending delayed rebuilds.
  ~HealthTracker();
  HealthTracker(const HealthTracker&) = delete;
  HealthTracker& operator=(const HealthTracker&) = delete;

  /// \brief Records a successful warm restore of \p generation: resets consecutive failures, sets last_used_at.
  /// \param snapshot_id The snapshot.
  /// \param generation The generation the clone was restored from; a retired one changes nothing.
  /// \return Ok (also for a retired generation); InvalidArgument; NotFound.
  Status RecordSuccess(const std::string& snapshot_id, int64_t generation);
  /// \brief Records a failed warm restore of \p generation; may mark the snapshot unhealthy and trigger a rebuild.
  /// \param snapshot_id The snapshot.
  /// \param generation The generation the clone was restored from; a retired one changes nothing.
  /// \param error What failed.
  /// \return Ok (also for a retired generation); InvalidArgument; NotFound.
  Status RecordFailure(const std::string& snapshot_id, int64_t generation, const std::string& error);
  /// \brief Outcomes ignored so far because their generation was no longer current.
  /// \return The count since construction.
  int64_t stale_outcomes() const;
  /// \brief Records that the snapshot's key no longer matches the host: schedules a rebuild, counts nothing.
  /// \param snapshot_id The snapshot.
  /// \param detail Which components differ.
  /// \return Ok; NotFound.
  Status RecordIncompatible(const std::string& snapshot_id, const std::string& detail);
  /// \brief The numbers of one snapshot.
  /// \param snapshot_id The snapshot.
  /// \return The stats; InvalidArgument; NotFound.
  Result<HealthStats> Stats(const std::string& snapshot_id) const;
  /// \brief Automatic rebuilds requested so far (scheduled, not merely considered).
  int64_t automatic_rebuilds() const;
  /// \brief Delayed rebuilds waiting for their backoff to expire.
  int pending_retries() const;
  /// \brief The options in force.
  const HealthOptions& options() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcwarm
