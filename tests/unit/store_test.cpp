#include <doctest/doctest.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include "fcwarm/store.hpp"
#include "store/store_db.hpp"
#include "support/test_env.hpp"

using namespace fcwarm;
using fcwarm::testing::TempDir;

TEST_CASE("migrations run from an empty database and are recorded") {
  TempDir dir;
  auto path = (dir.path() / "a.db").string();
  auto store = Store::Open({.path = path});
  REQUIRE(store.ok());
  CHECK((*store)->SchemaVersion() == Store::kSchemaVersion);
  store->reset();
  SQLite::Database db(path);
  CHECK(db.execAndGet("SELECT MAX(version) FROM schema_migrations").getInt() == Store::kSchemaVersion);
  CHECK(db.execAndGet("PRAGMA journal_mode").getString() == "wal");
  for (const char* t : {"runtime_images", "runtime_snapshots", "generations", "vms", "events", "address_allocations",
                        "processes", "containers"}) {
    SQLite::Statement q(db, "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name=?");
    q.bind(1, t);
    q.executeStep();
    CHECK_MESSAGE(q.getColumn(0).getInt() == 1, t);
  }
  // Reopening applies nothing twice.
  auto again = Store::Open({.path = path});
  REQUIRE(again.ok());
  SQLite::Database db2(path);
  // One row per migration (numbers may have gaps while parallel work lands: 7 before 5 and 6).
  CHECK(db2.execAndGet("SELECT COUNT(*) FROM schema_migrations").getInt() ==
        static_cast<int>(fcwarm::detail::Migrations().size()));
}

TEST_CASE("a database from a newer fcwarm is refused with a clear error") {
  TempDir dir;
  auto path = (dir.path() / "future.db").string();
  { REQUIRE(Store::Open({.path = path}).ok()); }
  {
    SQLite::Database db(path, SQLite::OPEN_READWRITE);
    db.exec("INSERT INTO schema_migrations(version, applied_at) VALUES (99, 0)");
  }
  auto store = Store::Open({.path = path});
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().code() == StatusCode::kFailedPrecondition);
  CHECK(store.status().message().find("schema version 99") != std::string::npos);
  CHECK(store.status().message().find("newer") != std::string::npos);
}

TEST_CASE("an unopenable path is reported") {
  auto store = Store::Open({.path = "/nonexistent-dir/x/y.db"});
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().code() == StatusCode::kUnavailable);
  CHECK(store.status().message().find("/nonexistent-dir/x/y.db") != std::string::npos);
}

TEST_CASE("foreign keys are enforced") {
  auto store = Store::Open({.path = ":memory:"});
  REQUIRE(store.ok());
  auto st = detail::DbOf(**store).With([](SQLite::Database& db) -> Status {
    db.exec("INSERT INTO runtime_snapshots(id, runtime_image_id, state, phase, created_at, updated_at) "
            "VALUES ('x', 'no-such-image', 'creating', 'queued', 0, 0)");
    return Status::Ok();
  });
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("FOREIGN KEY") != std::string::npos);
}

TEST_CASE("events append and page in both directions") {
  auto store = Store::Open({.path = ":memory:"});
  REQUIRE(store.ok());
  for (int i = 0; i < 25; ++i) {
    Event e;
    e.kind = i % 2 ? EventKind::kBoot : EventKind::kBuild;
    e.outcome = std::to_string(i);
    e.timings["total"] = i;
    REQUIRE((*store)->AppendEvent(e).ok());
  }
  auto page1 = (*store)->ListEvents({.limit = 10});
  REQUIRE(page1.ok());
  REQUIRE(page1->size() == 10);
  CHECK(page1->front().outcome == "0");
  auto page2 = (*store)->ListEvents({.after_id = page1->back().id, .limit = 10});
  REQUIRE(page2.ok());
  CHECK(page2->front().outcome == "10");
  auto boots = (*store)->ListEvents({.kind = EventKind::kBoot, .limit = 100});
  CHECK(boots->size() == 12);
  auto newest = (*store)->ListEvents({.limit = 3, .newest_first = true});
  CHECK(newest->front().outcome == "24");
  CHECK(newest->front().timings.at("total") == 24);
  CHECK_FALSE((*store)->ListEvents({.limit = 0}).ok());
  CHECK_FALSE((*store)->ListEvents({.limit = 5000}).ok());
}
