// Private: the SQLite connection behind fcwarm::Store, its migrations, and the `events` table. The other
// tables have their typed functions in images.hpp, snapshots.hpp, vms.hpp and containers.hpp.
#pragma once

#include <SQLiteCpp/SQLiteCpp.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "fcwarm/options.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"
#include "util/failpoint.hpp"

namespace fcwarm::detail {

/// One migration: the schema version it produces and its SQL (run in one transaction).
struct Migration {
  int version;
  const char* sql;
};

/// The ordered list of migrations of this build.
const std::vector<Migration>& Migrations();

class StoreDb {
 public:
  /// Opens (or creates) the database and migrates it. A file fcwarm cannot use is refused with a Status
  /// naming it and what is wrong, never replaced or emptied (docs/operations.md, "A broken store"): an
  /// existing empty file (a truncated database), one that is not a database or fails SQLite's integrity check
  /// (corrupt or truncated), a read-only file or file system, a write lock another process holds.
  static Result<std::unique_ptr<StoreDb>> Open(const StoreOptions& options);

  /// Runs `fn(db)` under the connection lock, converting SQLite exceptions into Status (Error()).
  /// `fn` returns Status or Result<T>.
  template <typename F>
  auto With(F&& fn) const -> decltype(fn(std::declval<SQLite::Database&>())) {
    std::lock_guard lock(mu_);
    try {
      return fn(*db_);
    } catch (const SQLite::Exception& e) {
      return Error(e);
    } catch (const std::exception& e) {
      return Status::Internal(std::string("store error: ") + e.what());
    }
  }
  /// Like With() for an `fn` that returns nothing: Ok, or the error it raised.
  template <typename F>
  Status Do(F&& fn) const {
    return With([&](SQLite::Database& db) {
      fn(db);
      return Status::Ok();
    });
  }
  /// Like With(), inside a transaction committed when `fn` returns ok.
  template <typename F>
  auto Tx(F&& fn) const -> decltype(fn(std::declval<SQLite::Database&>())) {
    std::lock_guard lock(mu_);
    try {
      SQLite::Transaction tx(*db_);
      auto r = fn(*db_);
      if (r.ok()) {
        FCWARM_FAILPOINT("store.tx.before_commit");  // rolled back by ~Transaction
        tx.commit();
        FCWARM_FAILPOINT("store.tx.after_commit");
      }
      return r;
    } catch (const SQLite::Exception& e) {
      return Error(e);
    } catch (const std::exception& e) {
      return Status::Internal(std::string("store error: ") + e.what());
    }
  }

  int schema_version() const { return schema_version_; }
  const std::string& path() const { return path_; }

 private:
  StoreDb() = default;
  Status Migrate();
  Status CheckUsable(const StoreOptions& options);
  // The Status of a SQLite error on this connection (SqliteStatus() with the OS error behind it).
  Status Error(const SQLite::Exception& e) const;

  mutable std::recursive_mutex mu_;
  std::unique_ptr<SQLite::Database> db_;
  std::string path_;
  int schema_version_ = 0;
};

/// The Status of a SQLite error about the database at `path`: `message` (SQLite's) with a code chosen by
/// SQLite's extended result code and the OS error behind it (docs/operations.md, "Disk full", "A broken
/// store"): ResourceExhausted for a full disk (SQLITE_FULL, or an I/O error with ENOSPC/EDQUOT), Unavailable
/// for a lock another process holds (SQLITE_BUSY, SQLITE_LOCKED), a read-only or unreachable file
/// (SQLITE_READONLY, SQLITE_CANTOPEN, other I/O errors), Internal for anything else (constraints, corruption,
/// misuse).
Status SqliteStatus(int extended_code, int sys_errno, const std::string& path, const std::string& message);

/// Appends an event (time 0: now); returns its id. Caller holds the lock.
int64_t InsertEvent(SQLite::Database& db, const Event& e);
/// The timings of the latest `limit` events of one kind and outcome about an image, newest first. Caller
/// holds the lock.
std::vector<Timings> LatestEventTimings(SQLite::Database& db, EventKind kind,
                                        const std::string& outcome, const std::string& image_id, int limit);

}  // namespace fcwarm::detail
