#include "store/store_db.hpp"

#include <boost/json.hpp>

#include "fcwarm/store.hpp"
#include "util/common.hpp"

namespace fcwarm::detail {
namespace json = boost::json;

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
  };
  return kMigrations;
}

Result<std::unique_ptr<StoreDb>> StoreDb::Open(const StoreOptions& options) {
  if (options.path.empty()) return Status::InvalidArgument("store path: must not be empty");
  std::unique_ptr<StoreDb> s(new StoreDb());
  s->path_ = options.path;
  try {
    s->db_ = std::make_unique<SQLite::Database>(options.path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE |
                                                                  SQLite::OPEN_FULLMUTEX);
    s->db_->setBusyTimeout(static_cast<int>(options.busy_timeout.count()));
    if (options.path != ":memory:") s->db_->exec("PRAGMA journal_mode=WAL");
    s->db_->exec("PRAGMA foreign_keys=ON");
    s->db_->exec("PRAGMA synchronous=NORMAL");
  } catch (const SQLite::Exception& e) {
    return Status::Unavailable("cannot open database '" + options.path + "': " + e.what());
  }
  if (auto st = s->Migrate(); !st.ok()) return st;
  return s;
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
    return Status::Unavailable("database '" + path_ + "': migration failed: " + e.what());
  }
  return Status::Ok();
}

const char* StoreDb::kImageColumns =
    "id, name, backend, kernel_path, initrd_path, rootfs_path, boot_args, vcpus, memory_mib, runtime_check, "
    "created_at";
const char* StoreDb::kSnapshotColumns =
    "id, runtime_image_id, state, phase, generation, generation_dir, compatibility_key, compatibility, "
    "size_bytes, disk_bytes, files, manifest_digest, success_count, failure_count, consecutive_failures, "
    "build_failures, last_error, created_at, updated_at, last_used_at";
const char* StoreDb::kVmColumns =
    "id, name, runtime_image_id, snapshot_id, generation, state, boot_method, fallback_reason, timings, "
    "work_dir, address, mac, hostname, last_error, created_at, updated_at";
const char* StoreDb::kEventColumns =
    "id, time, kind, runtime_image_id, snapshot_id, vm_id, outcome, reason, timings, message";

namespace {
RuntimeCheck CheckFromJson(const std::string& s) {
  RuntimeCheck c;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_object()) return c;
  const auto& o = v.as_object();
  if (auto* p = o.if_contains("kind"); p && p->is_string()) c.kind = std::string(p->as_string());
  if (auto* p = o.if_contains("path"); p && p->is_string()) c.path = std::string(p->as_string());
  if (auto* p = o.if_contains("argv"); p && p->is_array())
    for (const auto& a : p->as_array())
      if (a.is_string()) c.argv.emplace_back(a.as_string());
  return c;
}
}  // namespace

RuntimeImage StoreDb::ReadImage(SQLite::Statement& s) {
  RuntimeImage i;
  i.id = s.getColumn(0).getString();
  i.name = s.getColumn(1).getString();
  i.backend = s.getColumn(2).getString();
  i.kernel_path = s.getColumn(3).getString();
  i.initrd_path = s.getColumn(4).getString();
  i.rootfs_path = s.getColumn(5).getString();
  i.boot_args = s.getColumn(6).getString();
  i.shape.vcpus = static_cast<uint32_t>(s.getColumn(7).getInt());
  i.shape.memory_mib = static_cast<uint32_t>(s.getColumn(8).getInt());
  i.runtime_check = CheckFromJson(s.getColumn(9).getString());
  i.created_at = s.getColumn(10).getInt64();
  return i;
}

RuntimeSnapshot StoreDb::ReadSnapshot(SQLite::Statement& s) {
  RuntimeSnapshot r;
  r.id = s.getColumn(0).getString();
  r.runtime_image_id = s.getColumn(1).getString();
  r.state = ParseSnapshotState(s.getColumn(2).getString()).value();
  auto phase = ParseBuildPhase(s.getColumn(3).getString());
  r.phase = phase.ok() ? phase.value() : BuildPhase::kDone;
  r.generation = s.getColumn(4).getInt64();
  r.generation_dir = s.getColumn(5).getString();
  r.compatibility_key = s.getColumn(6).getString();
  r.compatibility = util::StringMapFromJson(s.getColumn(7).getString());
  r.size_bytes = static_cast<uint64_t>(s.getColumn(8).getInt64());
  r.disk_bytes = static_cast<uint64_t>(s.getColumn(9).getInt64());
  r.files = util::FilesFromJson(s.getColumn(10).getString());
  r.manifest_digest = s.getColumn(11).getString();
  r.success_count = s.getColumn(12).getInt64();
  r.failure_count = s.getColumn(13).getInt64();
  r.consecutive_failures = s.getColumn(14).getInt64();
  r.build_failures = s.getColumn(15).getInt64();
  r.last_error = s.getColumn(16).getString();
  r.created_at = s.getColumn(17).getInt64();
  r.updated_at = s.getColumn(18).getInt64();
  if (!s.getColumn(19).isNull()) r.last_used_at = s.getColumn(19).getInt64();
  return r;
}

VmRecord StoreDb::ReadVm(SQLite::Statement& s) {
  VmRecord v;
  v.id = s.getColumn(0).getString();
  v.name = s.getColumn(1).getString();
  v.runtime_image_id = s.getColumn(2).getString();
  v.snapshot_id = s.getColumn(3).getString();
  v.generation = s.getColumn(4).getInt64();
  v.state = ParseVmState(s.getColumn(5).getString()).value();
  v.boot_method = ParseBootMethod(s.getColumn(6).getString()).value();
  auto r = ParseFallbackReason(s.getColumn(7).getString());
  v.fallback_reason = r.ok() ? r.value() : FallbackReason::kNone;
  v.timings = util::TimingsFromJson(s.getColumn(8).getString());
  v.work_dir = s.getColumn(9).getString();
  v.address = s.getColumn(10).getString();
  v.mac = s.getColumn(11).getString();
  v.hostname = s.getColumn(12).getString();
  v.last_error = s.getColumn(13).getString();
  v.created_at = s.getColumn(14).getInt64();
  v.updated_at = s.getColumn(15).getInt64();
  return v;
}

Event StoreDb::ReadEvent(SQLite::Statement& s) {
  Event e;
  e.id = s.getColumn(0).getInt64();
  e.time = s.getColumn(1).getInt64();
  e.kind = s.getColumn(2).getString();
  e.runtime_image_id = s.getColumn(3).getString();
  e.snapshot_id = s.getColumn(4).getString();
  e.vm_id = s.getColumn(5).getString();
  e.outcome = s.getColumn(6).getString();
  e.reason = s.getColumn(7).getString();
  e.timings = util::TimingsFromJson(s.getColumn(8).getString());
  e.message = s.getColumn(9).getString();
  return e;
}

Result<RuntimeSnapshot> StoreDb::SnapshotById(SQLite::Database& db, const std::string& id) {
  SQLite::Statement q(db, std::string("SELECT ") + kSnapshotColumns + " FROM runtime_snapshots WHERE id = ?");
  q.bind(1, id);
  if (!q.executeStep()) return Status::NotFound("runtime snapshot '" + id + "' not found");
  return ReadSnapshot(q);
}

Result<RuntimeImage> StoreDb::ImageById(SQLite::Database& db, const std::string& id) {
  SQLite::Statement q(db, std::string("SELECT ") + kImageColumns + " FROM runtime_images WHERE id = ?");
  q.bind(1, id);
  if (!q.executeStep()) return Status::NotFound("runtime image '" + id + "' not found");
  return ReadImage(q);
}

Result<VmRecord> StoreDb::VmById(SQLite::Database& db, const std::string& id) {
  SQLite::Statement q(db, std::string("SELECT ") + kVmColumns + " FROM vms WHERE id = ?");
  q.bind(1, id);
  if (!q.executeStep()) return Status::NotFound("vm '" + id + "' not found");
  return ReadVm(q);
}

int64_t StoreDb::InsertEvent(SQLite::Database& db, const Event& e) {
  SQLite::Statement q(db,
                      "INSERT INTO events(time, kind, runtime_image_id, snapshot_id, vm_id, outcome, reason, "
                      "timings, message) VALUES (?,?,?,?,?,?,?,?,?)");
  q.bind(1, static_cast<int64_t>(e.time ? e.time : util::NowMillis()));
  q.bind(2, e.kind);
  q.bind(3, e.runtime_image_id);
  q.bind(4, e.snapshot_id);
  q.bind(5, e.vm_id);
  q.bind(6, e.outcome);
  q.bind(7, e.reason);
  q.bind(8, util::TimingsToJson(e.timings));
  q.bind(9, e.message);
  q.exec();
  return db.getLastInsertRowid();
}

}  // namespace fcwarm::detail

namespace fcwarm {

Store::Store(std::unique_ptr<detail::StoreDb> db) : db_(std::move(db)) {}
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
    std::string sql = std::string("SELECT ") + detail::StoreDb::kEventColumns + " FROM events WHERE 1=1";
    if (!f.kind.empty()) sql += " AND kind = :kind";
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
    if (!f.kind.empty()) q.bind(":kind", f.kind);
    if (!f.runtime_image_id.empty()) q.bind(":image", f.runtime_image_id);
    if (!f.snapshot_id.empty()) q.bind(":snap", f.snapshot_id);
    if (f.newest_first) {
      if (f.before_id > 0) q.bind(":before", static_cast<int64_t>(f.before_id));
    } else {
      q.bind(":after", static_cast<int64_t>(f.after_id));
    }
    q.bind(":limit", static_cast<int64_t>(f.limit));
    std::vector<Event> out;
    while (q.executeStep()) out.push_back(detail::StoreDb::ReadEvent(q));
    return out;
  });
}

Result<int64_t> Store::AppendEvent(const Event& event) {
  return db_->With([&](SQLite::Database& db) -> Result<int64_t> { return detail::StoreDb::InsertEvent(db, event); });
}

}  // namespace fcwarm
