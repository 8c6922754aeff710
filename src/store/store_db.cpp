#include "store/store_db.hpp"

#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fcwarm/store.hpp"
#include "store/sql.hpp"
#include "util/common.hpp"

namespace fcwarm::detail {

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> kMigrations = {
      {1, R"SQL(
CREATE TABLE runtime_images (
  id            TEXT PRIMARY KEY,
  name          TEXT NOT NULL UNIQUE,
  backend       TEXT NOT NULL,
  kernel_path   TEXT NOT NULL,
  initrd_path   TEXT NOT NULL DEFAULT '',
  rootfs_path   TEXT NOT NULL DEFAULT '',
  boot_args     TEXT NOT NULL DEFAULT '',
  vcpus         INTEGER NOT NULL CHECK (vcpus BETWEEN 1 AND 64),
  memory_mib    INTEGER NOT NULL CHECK (memory_mib BETWEEN 64 AND 262144),
  runtime_check TEXT NOT NULL DEFAULT '{"kind":"none"}',
  created_at    INTEGER NOT NULL
);
CREATE TABLE runtime_snapshots (
  id                   TEXT PRIMARY KEY,
  runtime_image_id     TEXT NOT NULL REFERENCES runtime_images(id) ON DELETE CASCADE,
  state                TEXT NOT NULL CHECK (state IN ('creating','ready','unhealthy','deleted')),
  phase                TEXT NOT NULL,
  generation           INTEGER NOT NULL DEFAULT 0,
  generation_dir       TEXT NOT NULL DEFAULT '',
  compatibility_key    TEXT NOT NULL DEFAULT '',
  compatibility        TEXT NOT NULL DEFAULT '{}',
  size_bytes           INTEGER NOT NULL DEFAULT 0,
  disk_bytes           INTEGER NOT NULL DEFAULT 0,
  files                TEXT NOT NULL DEFAULT '[]',
  manifest_digest      TEXT NOT NULL DEFAULT '',
  success_count        INTEGER NOT NULL DEFAULT 0,
  failure_count        INTEGER NOT NULL DEFAULT 0,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  build_failures       INTEGER NOT NULL DEFAULT 0,
  restores_since_full_verify INTEGER NOT NULL DEFAULT 0,
  last_error           TEXT NOT NULL DEFAULT '',
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL,
  last_used_at         INTEGER
);
CREATE INDEX runtime_snapshots_by_image ON runtime_snapshots(runtime_image_id, created_at);
CREATE TABLE generations (
  snapshot_id TEXT NOT NULL REFERENCES runtime_snapshots(id) ON DELETE CASCADE,
  number      INTEGER NOT NULL,
  dir         TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('building','current','retired','removed')),
  created_at  INTEGER NOT NULL,
  PRIMARY KEY (snapshot_id, number)
);
CREATE TABLE vms (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL DEFAULT '',
  runtime_image_id TEXT NOT NULL REFERENCES runtime_images(id) ON DELETE CASCADE,
  snapshot_id      TEXT NOT NULL DEFAULT '',
  generation       INTEGER NOT NULL DEFAULT 0,
  state            TEXT NOT NULL CHECK (state IN ('starting','running','stopped','destroyed','failed','lost')),
  boot_method      TEXT NOT NULL CHECK (boot_method IN ('warm','cold')),
  fallback_reason  TEXT NOT NULL DEFAULT '',
  timings          TEXT NOT NULL DEFAULT '{}',
  work_dir         TEXT NOT NULL DEFAULT '',
  address          TEXT NOT NULL DEFAULT '',
  mac              TEXT NOT NULL DEFAULT '',
  hostname         TEXT NOT NULL DEFAULT '',
  last_error       TEXT NOT NULL DEFAULT '',
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL
);
CREATE INDEX vms_by_snapshot ON vms(snapshot_id, generation, state);
CREATE TABLE events (
  id               INTEGER PRIMARY KEY AUTOINCREMENT,
  time             INTEGER NOT NULL,
  kind             TEXT NOT NULL,
  runtime_image_id TEXT NOT NULL DEFAULT '',
  snapshot_id      TEXT NOT NULL DEFAULT '',
  vm_id            TEXT NOT NULL DEFAULT '',
  outcome          TEXT NOT NULL DEFAULT '',
  reason           TEXT NOT NULL DEFAULT '',
  timings          TEXT NOT NULL DEFAULT '{}',
  message          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_kind ON events(kind, id);
CREATE TABLE address_allocations (
  idx          INTEGER PRIMARY KEY,
  vm_id        TEXT NOT NULL UNIQUE,
  mac          TEXT NOT NULL UNIQUE,
  ip_cidr      TEXT NOT NULL UNIQUE,
  allocated_at INTEGER NOT NULL
);
CREATE TABLE processes (
  pid        INTEGER NOT NULL,
  start_time INTEGER NOT NULL,
  role       TEXT NOT NULL,
  owner_id   TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (pid, start_time)
);
)SQL"},
      {2, R"SQL(
CREATE TABLE containers (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL DEFAULT '',
  runtime_image_id TEXT NOT NULL REFERENCES runtime_images(id) ON DELETE CASCADE,
  runtime          TEXT NOT NULL CHECK (runtime IN ('docker','vm')),
  image            TEXT NOT NULL DEFAULT '',
  command          TEXT NOT NULL DEFAULT '[]',
  env              TEXT NOT NULL DEFAULT '{}',
  force_cold       INTEGER NOT NULL DEFAULT 0,
  wait_for_creating_ms INTEGER,
  state            TEXT NOT NULL CHECK (state IN ('provisioning','running','exited','stopped','failed','lost','destroyed')),
  started          INTEGER NOT NULL DEFAULT 0,
  docker_id        TEXT NOT NULL DEFAULT '',
  exit_code        INTEGER,
  timings          TEXT NOT NULL DEFAULT '{}',
  last_error       TEXT NOT NULL DEFAULT '',
  stdout_data      BLOB,
  stderr_data      BLOB,
  logs_truncated   INTEGER NOT NULL DEFAULT 0,
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL,
  started_at       INTEGER,
  finished_at      INTEGER
);
CREATE INDEX containers_by_state ON containers(state);
)SQL"},
      // Containers get published ports and image pulls (state `pulling`); SQLite cannot change a CHECK
      // constraint in place, so the table is copied.
      {3, R"SQL(
CREATE TABLE containers_v3 (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL DEFAULT '',
  runtime_image_id TEXT NOT NULL REFERENCES runtime_images(id) ON DELETE CASCADE,
  runtime          TEXT NOT NULL CHECK (runtime IN ('docker','vm')),
  image            TEXT NOT NULL DEFAULT '',
  command          TEXT NOT NULL DEFAULT '[]',
  env              TEXT NOT NULL DEFAULT '{}',
  ports            TEXT NOT NULL DEFAULT '[]',
  force_cold       INTEGER NOT NULL DEFAULT 0,
  wait_for_creating_ms INTEGER,
  state            TEXT NOT NULL CHECK (state IN ('provisioning','pulling','running','exited','stopped','failed','lost','destroyed')),
  started          INTEGER NOT NULL DEFAULT 0,
  docker_id        TEXT NOT NULL DEFAULT '',
  exit_code        INTEGER,
  pull_layers      INTEGER,
  pull_bytes       INTEGER,
  pull_ms          INTEGER,
  timings          TEXT NOT NULL DEFAULT '{}',
  last_error       TEXT NOT NULL DEFAULT '',
  stdout_data      BLOB,
  stderr_data      BLOB,
  logs_truncated   INTEGER NOT NULL DEFAULT 0,
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL,
  started_at       INTEGER,
  finished_at      INTEGER
);
INSERT INTO containers_v3(id, name, runtime_image_id, runtime, image, command, env, force_cold,
  wait_for_creating_ms, state, started, docker_id, exit_code, timings, last_error, stdout_data, stderr_data,
  logs_truncated, created_at, updated_at, started_at, finished_at)
SELECT id, name, runtime_image_id, runtime, image, command, env, force_cold, wait_for_creating_ms, state, started,
  docker_id, exit_code, timings, last_error, stdout_data, stderr_data, logs_truncated, created_at, updated_at,
  started_at, finished_at FROM containers;
DROP TABLE containers;
ALTER TABLE containers_v3 RENAME TO containers;
CREATE INDEX containers_by_state ON containers(state);
)SQL"},
      // Snapshot builds pre-pull container images: the runtime image's own list, and what a snapshot holds.
      {4, R"SQL(
ALTER TABLE runtime_images ADD COLUMN preload_images TEXT NOT NULL DEFAULT '[]';
ALTER TABLE runtime_snapshots ADD COLUMN images TEXT NOT NULL DEFAULT '[]';
)SQL"},
      // A pull's live progress: how much it downloads, and whether it finished (rows before: finished).
      {5, R"SQL(
ALTER TABLE containers ADD COLUMN pull_layers_total INTEGER;
ALTER TABLE containers ADD COLUMN pull_bytes_total INTEGER;
ALTER TABLE containers ADD COLUMN pull_done INTEGER;
)SQL"},
      // The clone pool: VMs in state `pooled`, whether a VM was taken from the pool, and the id its host
      // resources are named after (a taken clone's record gets the request's id). SQLite cannot change a CHECK
      // constraint in place, so the table is copied.
      {6, R"SQL(
CREATE TABLE vms_v6 (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL DEFAULT '',
  runtime_image_id TEXT NOT NULL REFERENCES runtime_images(id) ON DELETE CASCADE,
  snapshot_id      TEXT NOT NULL DEFAULT '',
  generation       INTEGER NOT NULL DEFAULT 0,
  state            TEXT NOT NULL CHECK (state IN ('starting','running','stopped','destroyed','failed','lost','pooled')),
  boot_method      TEXT NOT NULL CHECK (boot_method IN ('warm','cold')),
  fallback_reason  TEXT NOT NULL DEFAULT '',
  timings          TEXT NOT NULL DEFAULT '{}',
  work_dir         TEXT NOT NULL DEFAULT '',
  address          TEXT NOT NULL DEFAULT '',
  mac              TEXT NOT NULL DEFAULT '',
  hostname         TEXT NOT NULL DEFAULT '',
  last_error       TEXT NOT NULL DEFAULT '',
  pooled           INTEGER NOT NULL DEFAULT 0,
  instance_id      TEXT NOT NULL DEFAULT '',
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL
);
INSERT INTO vms_v6(id, name, runtime_image_id, snapshot_id, generation, state, boot_method, fallback_reason,
  timings, work_dir, address, mac, hostname, last_error, instance_id, created_at, updated_at)
SELECT id, name, runtime_image_id, snapshot_id, generation, state, boot_method, fallback_reason, timings,
  work_dir, address, mac, hostname, last_error, id, created_at, updated_at FROM vms;
DROP TABLE vms;
ALTER TABLE vms_v6 RENAME TO vms;
CREATE INDEX vms_by_snapshot ON vms(snapshot_id, generation, state);
CREATE INDEX vms_by_instance ON vms(instance_id);
)SQL"},
      // Parked containers (issue 14): what a snapshot holds started, and how each container was started, with
      // the request fields only the created path had before (working directory, user, read-only root).
      {7, R"SQL(
ALTER TABLE runtime_snapshots ADD COLUMN parked TEXT NOT NULL DEFAULT '[]';
ALTER TABLE containers ADD COLUMN working_dir TEXT NOT NULL DEFAULT '';
ALTER TABLE containers ADD COLUMN user TEXT NOT NULL DEFAULT '';
ALTER TABLE containers ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE containers ADD COLUMN container_path TEXT NOT NULL DEFAULT '';
ALTER TABLE containers ADD COLUMN container_path_reason TEXT NOT NULL DEFAULT '';
)SQL"},
      // The snapshot repository (issue 16): whether a snapshot's generation was built here or fetched.
      {8, R"SQL(
ALTER TABLE runtime_snapshots ADD COLUMN origin TEXT NOT NULL DEFAULT '';
UPDATE runtime_snapshots SET origin = 'built' WHERE generation > 0;
)SQL"},
  };
  return kMigrations;
}

Status SqliteStatus(int extended_code, int sys_errno, const std::string& path, const std::string& message) {
  const std::string what = "database '" + path + "': " + message;
  const std::string os = sys_errno > 0 ? std::string(" (") + std::strerror(sys_errno) + ")" : "";
  switch (extended_code & 0xff) {
    case SQLITE_FULL:
      return Status::ResourceExhausted(what + os + "; free space on its file system");
    case SQLITE_IOERR:
      if (util::IsNoSpace(sys_errno))
        return Status::ResourceExhausted(what + os + "; free space on its file system");
      return Status::Unavailable(what + os);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Status::Unavailable(what + " (another process holds a lock on it)");
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
      return Status::Unavailable(what + os);
    default:
      return Status::Internal("database error: " + message);
  }
}

Status StoreDb::Error(const SQLite::Exception& e) const {
  return SqliteStatus(e.getExtendedErrorCode(), db_ ? sqlite3_system_errno(db_->getHandle()) : 0, path_,
                      e.what());
}

namespace {

// What an operator reads when a database file cannot be used; fcwarm never replaces or empties it.
constexpr const char* kKeepsFile =
    "; fcwarm leaves the file as it is: restore it from a backup, or move it away "
    "to start with an empty store (docs/operations.md, \"A broken store\")";

// The Status of a SQLite error while opening or checking the database file at `path`.
Status OpenError(const SQLite::Database* db, const SQLite::Exception& e, const std::string& path,
                 std::chrono::milliseconds busy_timeout) {
  const int code = e.getExtendedErrorCode() & 0xff;
  if (code == SQLITE_NOTADB || code == SQLITE_CORRUPT) {
    return Status::FailedPrecondition("database '" + path + "' is corrupt or truncated (" + e.what() + ")" +
                                      kKeepsFile);
  }
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) {
    return Status::Unavailable("database '" + path + "' is locked by another process (" + e.what() +
                               " after waiting up to " + std::to_string(busy_timeout.count()) +
                               " ms): stop the process that holds it (another fcwarm on this data directory, "
                               "a sqlite3 shell in a transaction)");
  }
  if (code == SQLITE_READONLY) {
    return Status::FailedPrecondition("database '" + path + "' is read-only (" + e.what() +
                                      "): fcwarm writes it; make the file and its directory writable");
  }
  int sys_errno = db ? sqlite3_system_errno(db->getHandle()) : 0;
  StatusCode c = SqliteStatus(e.getExtendedErrorCode(), sys_errno, path, e.what()).code();
  return Status(c == StatusCode::kInternal ? StatusCode::kUnavailable : c,
                "cannot open database '" + path + "': " + e.what() +
                    (sys_errno > 0 ? std::string(" (") + std::strerror(sys_errno) + ")" : ""));
}

}  // namespace

Result<std::unique_ptr<StoreDb>> StoreDb::Open(const StoreOptions& options) {
  if (options.path.empty()) return Status::InvalidArgument("store path: must not be empty");
  std::unique_ptr<StoreDb> s(new StoreDb());
  s->path_ = options.path;
  const bool file = options.path != ":memory:";
  // SQLite takes an empty file for a new database: a database truncated to nothing would be silently
  // replaced. fcwarm never leaves one behind, even in a crash: the first statement (journal_mode=WAL) writes
  // the header into the file itself, before any schema.
  if (file) {
    struct stat st {};
    if (::stat(options.path.c_str(), &st) == 0) {
      if (!S_ISREG(st.st_mode)) {
        return Status::FailedPrecondition("database '" + options.path + "' is not a regular file");
      }
      if (st.st_size == 0) {
        return Status::FailedPrecondition("database '" + options.path +
                                          "' is an empty file (0 bytes: truncated?)" + kKeepsFile);
      }
    }
  }
  try {
    s->db_ = std::make_unique<SQLite::Database>(options.path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE |
                                                                  SQLite::OPEN_FULLMUTEX);
    s->db_->setBusyTimeout(static_cast<int>(options.busy_timeout.count()));
    if (file) s->db_->exec("PRAGMA journal_mode=WAL");
    s->db_->exec("PRAGMA foreign_keys=ON");
    s->db_->exec("PRAGMA synchronous=NORMAL");
  } catch (const SQLite::Exception& e) {
    return OpenError(s->db_.get(), e, options.path, options.busy_timeout);
  }
  if (file) {
    if (auto st = s->CheckUsable(options); !st.ok()) return st;
  }
  if (auto st = s->Migrate(); !st.ok()) return st;
  return s;
}

// A database fcwarm opened but cannot use is refused at once, not at the first write: it must be writable
// (SQLite silently opens a file it cannot write read-only), whole (quick_check reads every page: corruption
// and truncation SQLite's open does not see) and not write-locked by another process.
Status StoreDb::CheckUsable(const StoreOptions& options) {
  try {
    if (sqlite3_db_readonly(db_->getHandle(), "main") == 1) {
      return Status::FailedPrecondition(
          "database '" + path_ +
          "' is read-only (a read-only file, an immutable attribute or a read-only "
          "mount): fcwarm writes it; make the file and its directory writable");
    }
    std::string verdict = "no answer";
    {
      // Finalized before the write probe: SQLite does not wait for a write lock while a statement holds a
      // read.
      SQLite::Statement check(*db_, "PRAGMA quick_check(1)");
      if (check.executeStep()) verdict = check.getColumn(0).getString();
    }
    if (verdict != "ok") {
      std::replace(verdict.begin(), verdict.end(), '\n', ' ');
      return Status::FailedPrecondition(
          "database '" + path_ + "' is corrupt or truncated (integrity check: " + verdict.substr(0, 200) +
          ")" + kKeepsFile);
    }
    db_->exec("BEGIN IMMEDIATE");
    db_->exec("ROLLBACK");
  } catch (const SQLite::Exception& e) {
    return OpenError(db_.get(), e, path_, options.busy_timeout);
  }
  return Status::Ok();
}

Status StoreDb::Migrate() {
  try {
    db_->exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT "
        "NULL)");
    int current = db_->execAndGet("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").getInt();
    int newest = Migrations().back().version;
    if (current > newest) {
      return Status::FailedPrecondition("database '" + path_ + "' has schema version " + std::to_string(current) +
                                        ", newer than this fcwarm supports (" + std::to_string(newest) +
                                        "); refusing to open it — upgrade fcwarm");
    }
    for (const auto& m : Migrations()) {
      if (m.version <= current) continue;
      SQLite::Transaction tx(*db_);
      db_->exec(m.sql);
      SQLite::Statement ins(*db_, "INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)");
      ins.bind(1, m.version);
      ins.bind(2, static_cast<int64_t>(util::NowMillis()));
      ins.exec();
      tx.commit();
      current = m.version;
    }
    schema_version_ = current;
  } catch (const SQLite::Exception& e) {
    Status st = Error(e);
    return Status(st.code() == StatusCode::kInternal ? StatusCode::kUnavailable : st.code(),
                  "database '" + path_ + "': migration failed: " + e.what());
  }
  return Status::Ok();
}

namespace {

const RowMap<Event>& EventRows() {
  static const RowMap<Event> kRows{
      Col("id", &Event::id),
      Col("time", &Event::time),
      EnumCol("kind", &Event::kind, EventKind::kReconcile),
      Col("runtime_image_id", &Event::runtime_image_id),
      Col("snapshot_id", &Event::snapshot_id),
      Col("vm_id", &Event::vm_id),
      Col("outcome", &Event::outcome),
      Col("reason", &Event::reason),
      Col("timings", &Event::timings),
      Col("message", &Event::message),
  };
  return kRows;
}

}  // namespace

int64_t InsertEvent(SQLite::Database& db, const Event& e) {
  Exec(db,
       "INSERT INTO events(time, kind, runtime_image_id, snapshot_id, vm_id, outcome, reason, timings, "
       "message) VALUES (?,?,?,?,?,?,?,?,?)",
       e.time ? e.time : util::NowMillis(), std::string(ToString(e.kind)), e.runtime_image_id, e.snapshot_id, e.vm_id, e.outcome,
       e.reason, util::TimingsToJson(e.timings), e.message);
  return db.getLastInsertRowid();
}

std::vector<Timings> LatestEventTimings(SQLite::Database& db, EventKind kind,
                                        const std::string& outcome, const std::string& image_id, int limit) {
  std::vector<Timings> out;
  for (auto& e : EventRows().All(db,
                                 "FROM events WHERE kind = ? AND outcome = ? AND runtime_image_id = ? "
                                 "ORDER BY id DESC LIMIT ?",
                                 std::string(ToString(kind)), outcome, image_id, limit)) {
    out.push_back(std::move(e.timings));
  }
  return out;
}

}  // namespace fcwarm::detail

namespace fcwarm {

Store::Store(std::unique_ptr<detail::StoreDb> db) : db_(std::move(db)) {}

namespace detail {
StoreDb& DbOf(const Store& store) { return *store.db_; }
}  // namespace detail
Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  auto db = detail::StoreDb::Open(options);
  if (!db.ok()) return db.status();
  return std::unique_ptr<Store>(new Store(std::move(db).value()));
}

int Store::SchemaVersion() const { return db_->schema_version(); }
const std::string& Store::path() const { return db_->path(); }

Result<std::vector<Event>> Store::ListEvents(const EventFilter& f) const {
  if (f.limit < 1 || f.limit > 1000) {
    return Status::InvalidArgument("limit: " + std::to_string(f.limit) + " is outside 1-1000");
  }
  if (f.after_id < 0 || f.before_id < 0) return Status::InvalidArgument("after/before: must not be negative");
  return db_->With([&](SQLite::Database& db) -> Result<std::vector<Event>> {
    std::string sql = "SELECT " + detail::EventRows().columns() + " FROM events WHERE 1=1";
    if (f.kind) sql += " AND kind = :kind";
    if (!f.runtime_image_id.empty()) sql += " AND runtime_image_id = :image";
    if (!f.snapshot_id.empty()) sql += " AND snapshot_id = :snap";
    if (f.newest_first) {
      if (f.before_id > 0) sql += " AND id < :before";
      sql += " ORDER BY id DESC";
    } else {
      sql += " AND id > :after ORDER BY id ASC";
    }
    sql += " LIMIT :limit";
    SQLite::Statement q(db, sql);
    if (f.kind) q.bind(":kind", std::string(ToString(*f.kind)));
    if (!f.runtime_image_id.empty()) q.bind(":image", f.runtime_image_id);
    if (!f.snapshot_id.empty()) q.bind(":snap", f.snapshot_id);
    if (f.newest_first) {
      if (f.before_id > 0) q.bind(":before", static_cast<int64_t>(f.before_id));
    } else {
      q.bind(":after", static_cast<int64_t>(f.after_id));
    }
    q.bind(":limit", static_cast<int64_t>(f.limit));
    std::vector<Event> out;
    while (q.executeStep()) out.push_back(detail::EventRows().Read(q));
    return out;
  });
}

Result<int64_t> Store::AppendEvent(const Event& event) {
  return db_->With([&](SQLite::Database& db) -> Result<int64_t> { return detail::InsertEvent(db, event); });
}

}  // namespace fcwarm
