/// \file
/// \brief The persistent store: one SQLite database (WAL, foreign keys, versioned migrations).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fcwarm/options.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm {

class Store;
namespace detail {
class StoreDb;
StoreDb& DbOf(const Store& store);
}  // namespace detail

/// \brief Filter for Store::ListEvents().
struct EventFilter {
  std::optional<EventKind> kind;  ///< Only this kind, or every kind.
  std::string runtime_image_id;  ///< Only this image, or empty.
  std::string snapshot_id;       ///< Only this snapshot, or empty.
  int64_t after_id = 0;          ///< Only events with id > after_id (paging cursor).
  int64_t limit = 100;           ///< At most this many (1-1000).
  bool newest_first = false;     ///< Order by id descending (then `after_id` is ignored; use `before_id`).
  int64_t before_id = 0;         ///< With newest_first: only id < before_id (0: no bound).
};

/// \brief The SQLite database holding images, snapshots, VMs, events, address allocations and recorded
/// processes. The schema is versioned; opening a database written by a newer fcwarm fails.
///
/// Thread safety: safe for concurrent use from any number of threads (one connection, serialized).
class Store {
 public:
  /// \brief The schema version this build writes.
  static constexpr int kSchemaVersion = 8;

  /// \brief Opens (creating if needed) and migrates the database.
  /// \param options Path and timeouts.
  /// \return The store, or Unavailable (cannot open), FailedPrecondition (database from a newer version).
  static Result<std::unique_ptr<Store>> Open(const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  /// \brief The schema version stored in the database.
  int SchemaVersion() const;
  /// \brief The database path.
  const std::string& path() const;
  /// \brief Lists events.
  /// \param filter Which events.
  /// \return The events, or InvalidArgument for a bad limit.
  Result<std::vector<Event>> ListEvents(const EventFilter& filter) const;
  /// \brief Appends an event (the core does this for every decision).
  /// \param event The event; its id and (if 0) time are filled in.
  /// \return The stored event's id.
  Result<int64_t> AppendEvent(const Event& event);


 private:
  friend detail::StoreDb& detail::DbOf(const Store& store);  // the library's own access (src/store)
  explicit Store(std::unique_ptr<detail::StoreDb> db);
  std::unique_ptr<detail::StoreDb> db_;
};

}  // namespace fcwarm
