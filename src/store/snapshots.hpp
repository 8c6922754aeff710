// Private: typed access to the `runtime_snapshots` and `generations` tables. Caller holds the lock
// (StoreDb::With/Tx).
#pragma once

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/snapshot_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::detail {

/// Status of one generation directory of a snapshot.
enum class GenerationStatus {
  kBuilding,  ///< Its build runs (the directory is still `.tmp-gen-N`).
  kCurrent,   ///< The snapshot's published generation.
  kRetired,   ///< Replaced or deleted; removed once no live VM pins it.
  kRemoved,   ///< Its directory is gone.
};
/// Stable name ("building", "current", "retired", "removed").
std::string_view ToString(GenerationStatus s);

// ---- snapshots ----------------------------------------------------------------

/// The snapshot with this id; NotFound.
Result<RuntimeSnapshot> SnapshotById(SQLite::Database& db, const std::string& id);
/// Snapshots matching `filter`, newest first.
std::vector<RuntimeSnapshot> ListSnapshots(SQLite::Database& db, const SnapshotFilter& filter);
/// Snapshots not deleted, of one image or (empty id) of all images.
int64_t CountLiveSnapshots(SQLite::Database& db, const std::string& image_id);
/// Inserts a new snapshot, `creating` and `queued`.
void InsertSnapshot(SQLite::Database& db, const std::string& id, const std::string& image_id, int64_t now);
/// A snapshot that is not deleted becomes `creating` and `queued` again (a rebuild).
void RequeueSnapshot(SQLite::Database& db, const std::string& id, int64_t now);
/// Sets a snapshot's state.
void SetSnapshotState(SQLite::Database& db, const std::string& id, SnapshotState state, int64_t now);
/// Sets the build phase of a snapshot.
void SetSnapshotPhase(SQLite::Database& db, const std::string& id, BuildPhase phase, int64_t now);
/// A snapshot still `creating` whose build will not run (or not finish) becomes `unhealthy`, phase `done`,
/// with `error` as its last error.
void AbandonBuild(SQLite::Database& db, const std::string& id, const std::string& error, int64_t now);
/// Records a failed build: `unhealthy` (unless deleted), phase `done`, `error`, one more build failure.
/// Returns the consecutive build failures now recorded, or nullopt when the snapshot does not exist.
std::optional<int64_t> RecordBuildFailure(SQLite::Database& db, const std::string& id,
                                          const std::string& error, int64_t now);

/// What a successful build publishes.
struct PublishedGeneration {
  int64_t number = 0;
  std::string dir;
  std::string compatibility_key;
  std::map<std::string, std::string> compatibility;
  uint64_t size_bytes = 0;
  uint64_t disk_bytes = 0;
  std::vector<SnapshotFile> files;
  std::string manifest_digest;
  std::vector<std::string> images;  // what the snapshot's Docker daemon holds
  std::vector<ParkedContainer> parked;  // its parked containers
  std::string origin = "built";          // "built" here, or "fetched" from the snapshot repository
};
/// The snapshot becomes `ready` with the generation `g` as its content; health counters start over.
void PublishSnapshot(SQLite::Database& db, const std::string& id, const PublishedGeneration& g, int64_t now);

// ---- restore outcomes (HealthTracker) ------------------------------------------

/// Counts a successful restore of `generation`; false when that is not the snapshot's generation.
bool CountRestoreSuccess(SQLite::Database& db, const std::string& id, int64_t generation, int64_t now);
/// Counts a failed restore of `generation`; false when that is not the snapshot's generation.
bool CountRestoreFailure(SQLite::Database& db, const std::string& id, int64_t generation,
                         const std::string& error, int64_t now);
/// A `ready` snapshot becomes `unhealthy`; false when it was not ready.
bool MarkUnhealthyIfReady(SQLite::Database& db, const std::string& id);
/// The snapshot's current generation number; NotFound.
Result<int64_t> CurrentGeneration(SQLite::Database& db, const std::string& id);
/// Counts one more restore towards the next full verification; returns the count (0: no such snapshot).
int64_t CountRestoreSinceFullVerify(SQLite::Database& db, const std::string& id);
/// Starts counting restores towards the next full verification over.
void ResetFullVerifyCount(SQLite::Database& db, const std::string& id);

// ---- generations --------------------------------------------------------------

/// The number the next generation of a snapshot gets (1 for the first).
int64_t NextGenerationNumber(SQLite::Database& db, const std::string& snapshot_id);
/// Records a generation being built in `dir`.
void InsertGeneration(SQLite::Database& db, const std::string& snapshot_id, int64_t number,
                      const std::string& dir, int64_t now);
/// Sets the status of one generation.
void SetGenerationStatus(SQLite::Database& db, const std::string& snapshot_id, int64_t number,
                         GenerationStatus status);
/// The snapshot's current generation (if any) becomes retired.
void RetireCurrentGeneration(SQLite::Database& db, const std::string& snapshot_id);
/// Forgets one generation (a failed build's).
void DeleteGeneration(SQLite::Database& db, const std::string& snapshot_id, int64_t number);
/// Retires every generation left `building` (by a crash), so garbage collection removes its directory: a build
/// may have died after renaming it into place (docs/failpoints.md, `snapshot.build.publish`).
void RetireBuildingGenerations(SQLite::Database& db);

/// A generation directory garbage collection may remove.
struct CollectableGeneration {
  std::string snapshot_id;
  int64_t number = 0;
  std::string dir;
};
/// Retired generations that no live VM (starting, running, stopped) pins.
std::vector<CollectableGeneration> CollectableGenerations(SQLite::Database& db);
/// Generations of an image's snapshots whose files are not removed yet.
int64_t CountKeptGenerations(SQLite::Database& db, const std::string& image_id);

}  // namespace fcwarm::detail
