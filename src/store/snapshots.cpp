#include "store/snapshots.hpp"

#include "store/sql.hpp"
#include "util/common.hpp"

namespace fcwarm::detail {
namespace {

const RowMap<RuntimeSnapshot>& SnapshotRows() {
  static const RowMap<RuntimeSnapshot> kRows{
      Col("id", &RuntimeSnapshot::id),
      Col("runtime_image_id", &RuntimeSnapshot::runtime_image_id),
      Col("state", &RuntimeSnapshot::state),
      EnumCol("phase", &RuntimeSnapshot::phase, BuildPhase::kDone),
      Col("generation", &RuntimeSnapshot::generation),
      Col("generation_dir", &RuntimeSnapshot::generation_dir),
      Col("compatibility_key", &RuntimeSnapshot::compatibility_key),
      Col("compatibility", &RuntimeSnapshot::compatibility),
      Col("size_bytes", &RuntimeSnapshot::size_bytes),
      Col("disk_bytes", &RuntimeSnapshot::disk_bytes),
      Col("files", &RuntimeSnapshot::files),
      Col("manifest_digest", &RuntimeSnapshot::manifest_digest),
      Col("images", &RuntimeSnapshot::images),
      Col("parked", &RuntimeSnapshot::parked),
      Col("origin", &RuntimeSnapshot::origin),
      Col("success_count", &RuntimeSnapshot::success_count),
      Col("failure_count", &RuntimeSnapshot::failure_count),
      Col("consecutive_failures", &RuntimeSnapshot::consecutive_failures),
      Col("build_failures", &RuntimeSnapshot::build_failures),
      Col("last_error", &RuntimeSnapshot::last_error),
      Col("created_at", &RuntimeSnapshot::created_at),
      Col("updated_at", &RuntimeSnapshot::updated_at),
      Col("last_used_at", &RuntimeSnapshot::last_used_at),
  };
  return kRows;
}

const RowMap<CollectableGeneration>& GenerationRows() {
  static const RowMap<CollectableGeneration> kRows{
      Col("g.snapshot_id AS snapshot_id", &CollectableGeneration::snapshot_id),
      Col("g.number AS number", &CollectableGeneration::number),
      Col("g.dir AS dir", &CollectableGeneration::dir),
  };
  return kRows;
}

}  // namespace

std::string_view ToString(GenerationStatus s) {
  switch (s) {
    case GenerationStatus::kBuilding:
      return "building";
    case GenerationStatus::kCurrent:
      return "current";
    case GenerationStatus::kRetired:
      return "retired";
    case GenerationStatus::kRemoved:
      return "removed";
  }
  return "unknown";
}

// ---- snapshots ----------------------------------------------------------------

Result<RuntimeSnapshot> SnapshotById(SQLite::Database& db, const std::string& id) {
  auto snap = SnapshotRows().One(db, "FROM runtime_snapshots WHERE id = ?", id);
  if (!snap) return Status::NotFound("runtime snapshot '" + id + "' not found");
  return *snap;
}

std::vector<RuntimeSnapshot> ListSnapshots(SQLite::Database& db, const SnapshotFilter& f) {
  std::string sql = "SELECT " + SnapshotRows().columns() + " FROM runtime_snapshots WHERE 1=1";
  if (!f.runtime_image_id.empty()) sql += " AND runtime_image_id = :image";
  if (f.state || !f.include_deleted) sql += f.state ? " AND state = :state" : " AND state != :state";
  sql += " ORDER BY created_at DESC, rowid DESC";
  SQLite::Statement q(db, sql);
  if (!f.runtime_image_id.empty()) q.bind(":image", f.runtime_image_id);
  if (f.state || !f.include_deleted)
    q.bind(":state", std::string(ToString(f.state.value_or(SnapshotState::kDeleted))));
  std::vector<RuntimeSnapshot> out;
  while (q.executeStep()) out.push_back(SnapshotRows().Read(q));
  return out;
}

int64_t CountLiveSnapshots(SQLite::Database& db, const std::string& image_id) {
  if (image_id.empty()) {
    return *QueryInt(db, "SELECT COUNT(*) AS n FROM runtime_snapshots WHERE state != ?", "n",
                     SnapshotState::kDeleted);
  }
  return *QueryInt(db,
                   "SELECT COUNT(*) AS n FROM runtime_snapshots WHERE runtime_image_id = ? AND state != ?",
                   "n", image_id, SnapshotState::kDeleted);
}

void InsertSnapshot(SQLite::Database& db, const std::string& id, const std::string& image_id, int64_t now) {
  Exec(db,
       "INSERT INTO runtime_snapshots(id, runtime_image_id, state, phase, created_at, updated_at) "
       "VALUES (?, ?, ?, ?, ?, ?)",
       id, image_id, SnapshotState::kCreating, BuildPhase::kQueued, now, now);
}

void RequeueSnapshot(SQLite::Database& db, const std::string& id, int64_t now) {
  Exec(db, "UPDATE runtime_snapshots SET state = ?, phase = ?, updated_at = ? WHERE id = ? AND state != ?",
       SnapshotState::kCreating, BuildPhase::kQueued, now, id, SnapshotState::kDeleted);
}

void SetSnapshotState(SQLite::Database& db, const std::string& id, SnapshotState state, int64_t now) {
  Exec(db, "UPDATE runtime_snapshots SET state = ?, updated_at = ? WHERE id = ?", state, now, id);
}

void SetSnapshotPhase(SQLite::Database& db, const std::string& id, BuildPhase phase, int64_t now) {
  Exec(db, "UPDATE runtime_snapshots SET phase = ?, updated_at = ? WHERE id = ?", phase, now, id);
}

void AbandonBuild(SQLite::Database& db, const std::string& id, const std::string& error, int64_t now) {
  Exec(db,
       "UPDATE runtime_snapshots SET state = ?, phase = ?, last_error = ?, updated_at = ? WHERE id = ? AND "
       "state = ?",
       SnapshotState::kUnhealthy, BuildPhase::kDone, error, now, id, SnapshotState::kCreating);
}

std::optional<int64_t> RecordBuildFailure(SQLite::Database& db, const std::string& id,
                                          const std::string& error, int64_t now) {
  return QueryInt(
      db,
      "UPDATE runtime_snapshots SET state = CASE WHEN state = ?1 THEN ?1 ELSE ?2 END, phase = ?3, "
      "last_error = ?4, build_failures = build_failures + 1, updated_at = ?5 WHERE id = ?6 "
      "RETURNING build_failures",
      "build_failures", SnapshotState::kDeleted, SnapshotState::kUnhealthy, BuildPhase::kDone, error, now,
      id);
}

void PublishSnapshot(SQLite::Database& db, const std::string& id, const PublishedGeneration& g, int64_t now) {
  Exec(db,
       "UPDATE runtime_snapshots SET state = ?, phase = ?, generation = ?, generation_dir = ?, "
       "compatibility_key = ?, compatibility = ?, size_bytes = ?, disk_bytes = ?, files = ?, manifest_digest "
       "= ?, images = ?, parked = ?, origin = ?, "
       "consecutive_failures = 0, build_failures = 0, restores_since_full_verify = 0, last_error = '', "
       "updated_at = ? WHERE id = ?",
       SnapshotState::kReady, BuildPhase::kDone, g.number, g.dir, g.compatibility_key,
       util::StringMapToJson(g.compatibility), g.size_bytes, g.disk_bytes, util::FilesToJson(g.files),
       g.manifest_digest, util::StringListToJson(g.images), util::ParkedToJson(g.parked), g.origin, now, id);
}

// ---- restore outcomes ---------------------------------------------------------

bool CountRestoreSuccess(SQLite::Database& db, const std::string& id, int64_t generation, int64_t now) {
  return Exec(db,
              "UPDATE runtime_snapshots SET success_count = success_count + 1, consecutive_failures = 0, "
              "last_used_at = ?, updated_at = ? WHERE id = ? AND generation = ?",
              now, now, id, generation) == 1;
}

bool CountRestoreFailure(SQLite::Database& db, const std::string& id, int64_t generation,
                         const std::string& error, int64_t now) {
  return Exec(db,
              "UPDATE runtime_snapshots SET failure_count = failure_count + 1, consecutive_failures = "
              "consecutive_failures + 1, last_error = ?, updated_at = ? WHERE id = ? AND generation = ?",
              error, now, id, generation) == 1;
}

bool MarkUnhealthyIfReady(SQLite::Database& db, const std::string& id) {
  return Exec(db, "UPDATE runtime_snapshots SET state = ? WHERE id = ? AND state = ?",
              SnapshotState::kUnhealthy, id, SnapshotState::kReady) == 1;
}

Result<int64_t> CurrentGeneration(SQLite::Database& db, const std::string& id) {
  auto g = QueryInt(db, "SELECT generation FROM runtime_snapshots WHERE id = ?", "generation", id);
  if (!g) return Status::NotFound("runtime snapshot '" + id + "' not found");
  return *g;
}

int64_t CountRestoreSinceFullVerify(SQLite::Database& db, const std::string& id) {
  return QueryInt(db,
                  "UPDATE runtime_snapshots SET restores_since_full_verify = restores_since_full_verify + 1 "
                  "WHERE id = ? RETURNING restores_since_full_verify",
                  "restores_since_full_verify", id)
      .value_or(0);
}

void ResetFullVerifyCount(SQLite::Database& db, const std::string& id) {
  Exec(db, "UPDATE runtime_snapshots SET restores_since_full_verify = 0 WHERE id = ?", id);
}

// ---- generations --------------------------------------------------------------

int64_t NextGenerationNumber(SQLite::Database& db, const std::string& snapshot_id) {
  return *QueryInt(db, "SELECT COALESCE(MAX(number), 0) AS n FROM generations WHERE snapshot_id = ?", "n",
                   snapshot_id) +
         1;
}

void InsertGeneration(SQLite::Database& db, const std::string& snapshot_id, int64_t number,
                      const std::string& dir, int64_t now) {
  Exec(db, "INSERT INTO generations(snapshot_id, number, dir, status, created_at) VALUES (?,?,?,?,?)",
       snapshot_id, number, dir, GenerationStatus::kBuilding, now);
}

void SetGenerationStatus(SQLite::Database& db, const std::string& snapshot_id, int64_t number,
                         GenerationStatus status) {
  Exec(db, "UPDATE generations SET status = ? WHERE snapshot_id = ? AND number = ?", status, snapshot_id,
       number);
}

void RetireCurrentGeneration(SQLite::Database& db, const std::string& snapshot_id) {
  Exec(db, "UPDATE generations SET status = ? WHERE snapshot_id = ? AND status = ?",
       GenerationStatus::kRetired, snapshot_id, GenerationStatus::kCurrent);
}

void DeleteGeneration(SQLite::Database& db, const std::string& snapshot_id, int64_t number) {
  Exec(db, "DELETE FROM generations WHERE snapshot_id = ? AND number = ?", snapshot_id, number);
}

void RetireBuildingGenerations(SQLite::Database& db) {
  Exec(db, "UPDATE generations SET status = ? WHERE status = ?", GenerationStatus::kRetired,
       GenerationStatus::kBuilding);
}

std::vector<CollectableGeneration> CollectableGenerations(SQLite::Database& db) {
  return GenerationRows().All(
      db,
      "FROM generations g WHERE g.status = ? AND NOT EXISTS (SELECT 1 FROM vms v WHERE "
      "v.snapshot_id = g.snapshot_id AND v.generation = g.number AND v.state IN (?,?,?,?))",
      GenerationStatus::kRetired, VmState::kStarting, VmState::kRunning, VmState::kStopped, VmState::kPooled);
}

int64_t CountKeptGenerations(SQLite::Database& db, const std::string& image_id) {
  return *QueryInt(db,
                   "SELECT COUNT(*) AS n FROM generations g JOIN runtime_snapshots s ON s.id = g.snapshot_id "
                   "WHERE s.runtime_image_id = ? AND g.status != ?",
                   "n", image_id, GenerationStatus::kRemoved);
}

}  // namespace fcwarm::detail
