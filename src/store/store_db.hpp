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
  static Result<std::unique_ptr<StoreDb>> Open(const StoreOptions& options);

  /// Runs `fn(db)` under the connection lock, converting SQLite exceptions into Status.
  /// `fn` returns Status or Result<T>.
  template <typename F>
  auto With(F&& fn) const -> decltype(fn(std::declval<SQLite::Database&>())) {
    std::lock_guard lock(mu_);
    try {
      return fn(*db_);
    } catch (const SQLite::Exception& e) {
      return Status::Internal(std::string("database error: ") + e.what());
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
      return Status::Internal(std::string("database error: ") + e.what());
    } catch (const std::exception& e) {
      return Status::Internal(std::string("store error: ") + e.what());
    }
  }

  int schema_version() const { return schema_version_; }
  const std::string& path() const { return path_; }

 private:
  StoreDb() = default;
  Status Migrate();

  mutable std::recursive_mutex mu_;
  std::unique_ptr<SQLite::Database> db_;
  std::string path_;
  int schema_version_ = 0;
};

/// Appends an event (time 0: now); returns its id. Caller holds the lock.
int64_t InsertEvent(SQLite::Database& db, const Event& e);
/// The timings of the latest `limit` events of one kind and outcome about an image, newest first. Caller
/// holds the lock.
std::vector<Timings> LatestEventTimings(SQLite::Database& db, EventKind kind,
                                        const std::string& outcome, const std::string& image_id, int limit);

}  // namespace fcwarm::detail
