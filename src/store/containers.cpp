#include "store/containers.hpp"

#include <cmath>

#include "store/sql.hpp"
#include "util/common.hpp"

namespace fcwarm::detail {
namespace {

using R = ContainerRecord;

const RowMap<ContainerRow>& ContainerRows() {
  static const RowMap<ContainerRow> kRows{
      Col("c.id AS id", &ContainerRow::rec, &R::id),
      Col("c.name AS name", &ContainerRow::rec, &R::name),
      Col("c.runtime_image_id AS runtime_image_id", &ContainerRow::rec, &R::runtime_image_id),
      Col("c.runtime AS runtime", &ContainerRow::rec, &R::runtime),
      Col("c.image AS image", &ContainerRow::rec, &R::image),
      Col("c.command AS command", &ContainerRow::rec, &R::command),
      Col("c.env AS env", &ContainerRow::rec, &R::env),
      Col("c.working_dir AS working_dir", &ContainerRow::rec, &R::working_dir),
      Col("c.user AS user", &ContainerRow::rec, &R::user),
      Col("c.read_only AS read_only", &ContainerRow::rec, &R::read_only),
      Col("c.container_path AS container_path", &ContainerRow::rec, &R::container_path),
      Col("c.container_path_reason AS container_path_reason", &ContainerRow::rec, &R::container_path_reason),
      Col("c.ports AS ports", &ContainerRow::rec, &R::ports),
      Col("c.pull_layers AS pull_layers", &ContainerRow::pull_layers),
      Col("c.pull_bytes AS pull_bytes", &ContainerRow::pull_bytes),
      Col("c.pull_ms AS pull_ms", &ContainerRow::pull_ms),
      Col("c.pull_layers_total AS pull_layers_total", &ContainerRow::pull_layers_total),
      Col("c.pull_bytes_total AS pull_bytes_total", &ContainerRow::pull_bytes_total),
      Col("c.pull_done AS pull_done", &ContainerRow::pull_done),
      Col("c.force_cold AS force_cold", &ContainerRow::force_cold),
      Col("c.wait_for_creating_ms AS wait_for_creating_ms", &ContainerRow::wait_for_creating_ms),
      EnumCol("c.state AS state", &ContainerRow::rec, &R::state, ContainerState::kFailed),
      Col("c.started AS started", &ContainerRow::started),
      Col("c.docker_id AS docker_id", &ContainerRow::rec, &R::docker_id),
      Col("c.exit_code AS exit_code", &ContainerRow::rec, &R::exit_code),
      Col("c.timings AS timings", &ContainerRow::rec, &R::timings),
      Col("c.last_error AS last_error", &ContainerRow::rec, &R::last_error),
      Col("c.stdout_data IS NOT NULL AS has_logs", &ContainerRow::has_logs),
      Col("c.created_at AS created_at", &ContainerRow::rec, &R::created_at),
      Col("c.updated_at AS updated_at", &ContainerRow::rec, &R::updated_at),
      Col("c.started_at AS started_at", &ContainerRow::rec, &R::started_at),
      Col("c.finished_at AS finished_at", &ContainerRow::rec, &R::finished_at),
      // Its VM, which exists once provisioning started.
      EnumCol("COALESCE(v.boot_method, '') AS boot_method", &ContainerRow::vm_boot_method, BootMethod::kCold),
      EnumCol("COALESCE(v.fallback_reason, '') AS fallback_reason", &ContainerRow::rec, &R::fallback_reason,
              FallbackReason::kNone),
      Col("COALESCE(v.snapshot_id, '') AS snapshot_id", &ContainerRow::rec, &R::snapshot_id),
      Col("COALESCE(v.state, '') AS vm_state", &ContainerRow::rec, &R::vm_state),
      Col("COALESCE(v.address, '') AS address", &ContainerRow::rec, &R::address),
      Col("COALESCE(v.hostname, '') AS hostname", &ContainerRow::rec, &R::hostname),
      Col("COALESCE(v.timings, '{}') AS vm_timings", &ContainerRow::vm_timings),
      Col("COALESCE(v.last_error, '') AS vm_last_error", &ContainerRow::vm_last_error),
      Col("COALESCE(v.generation, 0) AS generation", &ContainerRow::rec, &R::generation),
      Col("COALESCE(v.mac, '') AS mac", &ContainerRow::rec, &R::mac),
  };
  return kRows;
}

const RowMap<ContainerLogs>& LogRows() {
  static const RowMap<ContainerLogs> kRows{
      Col("stdout_data", &ContainerLogs::stdout_data),
      Col("stderr_data", &ContainerLogs::stderr_data),
      Col("logs_truncated", &ContainerLogs::truncated),
  };
  return kRows;
}

constexpr const char* kFromContainers = "FROM containers c LEFT JOIN vms v ON v.id = c.id";

// The boot method is a fact once the container's VM got past `starting` and the container past `provisioning`
// (before, the VM row holds a placeholder): the one place that decides it.
ContainerRow WithBootMethod(ContainerRow row) {
  if (row.pull_layers) {
    row.rec.pull = ImagePull{static_cast<int>(*row.pull_layers),
                             row.pull_bytes.value_or(0),
                             static_cast<double>(row.pull_ms.value_or(0)),
                             static_cast<int>(row.pull_layers_total.value_or(*row.pull_layers)),
                             row.pull_bytes_total.value_or(row.pull_bytes.value_or(0)),
                             row.pull_done.value_or(1) != 0};
  }
  bool vm_started = !row.rec.vm_state.empty() && row.rec.vm_state != ToString(VmState::kStarting);
  if (vm_started && row.rec.state != ContainerState::kProvisioning) {  // pulling: its VM runs
    row.rec.boot_method = row.vm_boot_method;
  } else {
    row.rec.boot_method.reset();
  }
  return row;
}

}  // namespace

Result<ContainerRow> ContainerById(SQLite::Database& db, const std::string& id) {
  auto row = ContainerRows().One(db, std::string(kFromContainers) + " WHERE c.id = ?", id);
  if (!row) return Status::NotFound("container '" + id + "' not found");
  return WithBootMethod(std::move(*row));
}

std::vector<ContainerRow> ListContainers(SQLite::Database& db, bool include_destroyed) {
  const std::string order = " ORDER BY c.created_at DESC, c.rowid DESC";
  auto rows = include_destroyed ? ContainerRows().All(db, kFromContainers + order)
                                : ContainerRows().All(db, kFromContainers + (" WHERE c.state != ?" + order),
                                                      ContainerState::kDestroyed);
  for (auto& row : rows) row = WithBootMethod(std::move(row));
  return rows;
}

bool ContainerExists(SQLite::Database& db, const std::string& id) {
  return Exists(db, "SELECT 1 FROM containers WHERE id = ?", id);
}

void InsertContainer(SQLite::Database& db, const ContainerRecord& rec, bool force_cold,
                     std::optional<int64_t> wait_for_creating_ms, int64_t now) {
  Exec(db,
       "INSERT INTO containers(id, name, runtime_image_id, runtime, image, command, env, working_dir, user, "
       "read_only, ports, force_cold, wait_for_creating_ms, state, created_at, updated_at) "
       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
       rec.id, rec.name, rec.runtime_image_id, rec.runtime, rec.image, util::StringListToJson(rec.command),
       util::StringMapToJson(rec.env), rec.working_dir, rec.user, rec.read_only,
       util::StringListToJson(rec.ports), force_cold, wait_for_creating_ms, ContainerState::kProvisioning, now,
       now);
}

bool ClaimContainer(SQLite::Database& db, const std::string& id, int64_t now) {
  return Exec(db,
              "UPDATE containers SET started = 1, updated_at = ? WHERE id = ? AND state = ? AND started = 0",
              now, id, ContainerState::kProvisioning) == 1;
}

bool AbandonContainer(SQLite::Database& db, const std::string& id, const std::string& reason, int64_t now) {
  return Exec(db,
              "UPDATE containers SET state = ?, last_error = ?, updated_at = ?, finished_at = ? "
              "WHERE id = ? AND state = ? AND started = 0",
              ContainerState::kFailed, reason, now, now, id, ContainerState::kProvisioning) == 1;
}

int FailProvisioningContainers(SQLite::Database& db, const std::string& error, int64_t now) {
  return Exec(db,
              "UPDATE containers SET state = ?, last_error = ?, updated_at = ?, finished_at = ? "
              "WHERE state IN (?, ?)",
              ContainerState::kFailed, error, now, now, ContainerState::kProvisioning, ContainerState::kPulling);
}

void SetContainerPulling(SQLite::Database& db, const std::string& id, bool pulling, int64_t now) {
  Exec(db, "UPDATE containers SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
       pulling ? ContainerState::kPulling : ContainerState::kProvisioning, now, id,
       pulling ? ContainerState::kProvisioning : ContainerState::kPulling);
}

void RecordImagePull(SQLite::Database& db, const std::string& id, const ImagePull& pull, int64_t now) {
  Exec(db,
       "UPDATE containers SET pull_layers = ?, pull_bytes = ?, pull_ms = ?, pull_layers_total = ?, "
       "pull_bytes_total = ?, pull_done = ?, updated_at = ? WHERE id = ?",
       static_cast<int64_t>(pull.layers), pull.bytes, static_cast<int64_t>(std::llround(pull.ms)),
       static_cast<int64_t>(pull.layers_total), pull.bytes_total, static_cast<int64_t>(pull.done ? 1 : 0), now, id);
}

std::vector<std::string> PublishedPorts(SQLite::Database& db) {
  std::vector<std::string> out;
  SQLite::Statement q(db, "SELECT ports FROM containers WHERE ports != '[]' AND state IN (?, ?, ?)");
  q.bind(1, std::string(ToString(ContainerState::kProvisioning)));
  q.bind(2, std::string(ToString(ContainerState::kPulling)));
  q.bind(3, std::string(ToString(ContainerState::kRunning)));
  while (q.executeStep()) {
    for (auto& p : util::StringListFromJson(q.getColumn(0).getString())) out.push_back(std::move(p));
  }
  return out;
}

int LoseRunningContainers(SQLite::Database& db, const std::string& error, int64_t now) {
  return Exec(db, "UPDATE containers SET state = ?, last_error = ?, updated_at = ? WHERE state = ?",
              ContainerState::kLost, error, now, ContainerState::kRunning);
}

void SetContainerDockerId(SQLite::Database& db, const std::string& id, const std::string& docker_id,
                          int64_t now) {
  Exec(db, "UPDATE containers SET docker_id = ?, updated_at = ? WHERE id = ?", docker_id, now, id);
}

void SetContainerPath(SQLite::Database& db, const std::string& id, const std::string& path,
                      const std::string& reason, int64_t now) {
  Exec(db, "UPDATE containers SET container_path = ?, container_path_reason = ?, updated_at = ? WHERE id = ?",
       path, reason, now, id);
}

void MarkContainerRunning(SQLite::Database& db, const std::string& id, int64_t now) {
  Exec(db, "UPDATE containers SET state = ?, started_at = ?, updated_at = ? WHERE id = ?",
       ContainerState::kRunning, now, now, id);
}

void RecordContainerExit(SQLite::Database& db, const std::string& id, int exit_code, int64_t now) {
  Exec(db,
       "UPDATE containers SET state = ?, exit_code = ?, finished_at = ?, updated_at = ? WHERE id = ? AND "
       "state = ?",
       ContainerState::kExited, exit_code, now, now, id, ContainerState::kRunning);
}

void RecordCommandExit(SQLite::Database& db, const std::string& id, int exit_code, const ContainerLogs& logs,
                       int64_t started_at, int64_t finished_at) {
  Exec(
      db,
      "UPDATE containers SET state = ?, exit_code = ?, stdout_data = ?, stderr_data = ?, logs_truncated = ?, "
      "started_at = ?, finished_at = ?, updated_at = ? WHERE id = ?",
      ContainerState::kExited, exit_code, Blob{logs.stdout_data}, Blob{logs.stderr_data}, logs.truncated,
      started_at, finished_at, finished_at, id);
}

void StoreContainerLogs(SQLite::Database& db, const std::string& id, const ContainerLogs& logs) {
  Exec(db, "UPDATE containers SET stdout_data = ?, stderr_data = ?, logs_truncated = ? WHERE id = ?",
       Blob{logs.stdout_data}, Blob{logs.stderr_data}, logs.truncated, id);
}

Result<ContainerLogs> StoredContainerLogs(SQLite::Database& db, const std::string& id) {
  auto logs = LogRows().One(db, "FROM containers WHERE id = ?", id);
  if (!logs) return Status::NotFound("container '" + id + "' not found");
  return *logs;
}

void FinishContainer(SQLite::Database& db, const std::string& id, ContainerState state,
                     const std::string& error, const Timings* timings, int64_t now) {
  std::optional<std::string> encoded;
  if (timings) encoded = util::TimingsToJson(*timings);
  Exec(db,
       "UPDATE containers SET state = ?, last_error = ?, timings = COALESCE(?, timings), finished_at = ?, "
       "updated_at = ? WHERE id = ?",
       state, error, encoded, now, now, id);
}

void SetContainerState(SQLite::Database& db, const std::string& id, ContainerState state,
                       const std::string& error, int64_t now) {
  Exec(db, "UPDATE containers SET state = ?, last_error = ?, updated_at = ? WHERE id = ?", state, error, now,
       id);
}

void SetContainerTimings(SQLite::Database& db, const std::string& id, const Timings& timings, int64_t now) {
  Exec(db, "UPDATE containers SET timings = ?, updated_at = ? WHERE id = ?", util::TimingsToJson(timings),
       now, id);
}

}  // namespace fcwarm::detail
