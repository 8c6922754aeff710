#include <doctest/doctest.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;

TEST_CASE("100 concurrent failures cross the threshold once and trigger exactly one rebuild") {
  TestBed bed([](ServiceOptions& o) { o.health.unhealthy_threshold = 3; });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.generation == 1);
  int builds_before = bed.vmm->snapshots;
  std::vector<std::thread> threads;
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&, i] {
      CHECK(bed.service->health().RecordFailure(snap.id, snap.generation, "boom " + std::to_string(i)).ok());
    });
  }
  for (auto& t : threads) t.join();
  auto done = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(done->state == SnapshotState::kReady);
  CHECK(done->generation == 2);
  CHECK(bed.service->health().automatic_rebuilds() == 1);
  CHECK(bed.vmm->snapshots == builds_before + 1);
  // Every failure either counted against generation 1 or was ignored as belonging to a retired generation.
  CHECK(done->failure_count + bed.service->health().stale_outcomes() == 100);
  CHECK(done->consecutive_failures == 0);  // reset by the new generation, and nothing of generation 1 counts
  auto health = bed.service->store().ListEvents({.kind = EventKind::kHealth, .limit = 100});
  CHECK(health->size() == 1);
  CHECK(health->front().outcome == "unhealthy");
}

// The race of a burst of failures with the rebuild it triggers, made deterministic: the failing threads of
// generation 1 are held until the rebuild has published generation 2, then all report. Before outcomes carried
// their generation, these late failures made the fresh generation 2 unhealthy and queued a second rebuild.
TEST_CASE("failures of a retired generation never make the new generation unhealthy") {
  TestBed bed([](ServiceOptions& o) { o.health.unhealthy_threshold = 3; });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  const int64_t gen1 = snap.generation;
  auto& health = bed.service->health();
  // Three clones of generation 1 fail: the threshold is crossed and the automatic rebuild starts.
  for (int i = 0; i < 3; ++i) REQUIRE(health.RecordFailure(snap.id, gen1, "early " + std::to_string(i)).ok());
  CHECK(health.automatic_rebuilds() == 1);
  // The held threads: restored from generation 1, they report only once generation 2 is published.
  std::mutex mu;
  std::condition_variable cv;
  bool published = false;
  std::vector<std::thread> late;
  for (int i = 0; i < 50; ++i) {
    late.emplace_back([&, i] {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return published; });
      lock.unlock();
      CHECK(health.RecordFailure(snap.id, gen1, "late " + std::to_string(i)).ok());
    });
  }
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(rebuilt.ok());
  REQUIRE(rebuilt->state == SnapshotState::kReady);
  REQUIRE(rebuilt->generation == gen1 + 1);
  {
    std::lock_guard lock(mu);
    published = true;
  }
  cv.notify_all();
  for (auto& t : late) t.join();
  auto after = bed.service->snapshots().Get(snap.id);
  REQUIRE(after.ok());
  CHECK(after->state == SnapshotState::kReady);
  CHECK(after->consecutive_failures == 0);
  CHECK(after->failure_count == 3);
  CHECK(after->last_error.empty());  // cleared by the publish of generation 2, untouched since
  CHECK(health.stale_outcomes() == 50);
  CHECK(health.automatic_rebuilds() == 1);
  CHECK(bed.service->snapshots().ActiveBuilds() == 0);
  // A success of the retired generation does not count either; one of the current generation does.
  REQUIRE(health.RecordSuccess(snap.id, gen1).ok());
  CHECK(bed.service->snapshots().Get(snap.id)->success_count == 0);
  REQUIRE(health.RecordSuccess(snap.id, gen1 + 1).ok());
  CHECK(bed.service->snapshots().Get(snap.id)->success_count == 1);
  // Failures of the current generation still count.
  for (int i = 0; i < 3; ++i) REQUIRE(health.RecordFailure(snap.id, gen1 + 1, "now").ok());
  CHECK(health.automatic_rebuilds() == 2);
  CHECK(bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20))->generation == gen1 + 2);
}

// A build publishes its generation (the state flips to ready) a little before its job ends (it forgets the build
// VM's processes, removes its work directory, writes its event). A rebuild requested in that window, e.g. by
// failures of the fresh generation's first clones seen by a client that polled the state, used to be refused as
// "in flight" (automatic) or merged into the finished build (manual), which left an unhealthy snapshot unhealthy
// for good. Polling without any sleep lands in that window in most rounds; the requests must always be queued.
TEST_CASE("a rebuild requested as soon as the previous build's new state is visible is queued, not lost") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  auto& sm = bed.service->snapshots();
  int64_t gen = snap.generation;
  for (int round = 0; round < 20; ++round) {
    bool automatic = round % 2 == 0;
    if (automatic) {
      REQUIRE(sm.RequestAutomaticRebuild(snap.id));
    } else {
      auto r = sm.Rebuild(snap.id);
      REQUIRE(r.ok());
      REQUIRE(r->state == SnapshotState::kCreating);
    }
    ++gen;
    // Poll (no sleep) until the new generation is visible, exactly as a REST client would see it.
    Result<RuntimeSnapshot> s = sm.Get(snap.id);
    while (s.ok() && s->state == SnapshotState::kCreating) s = sm.Get(snap.id);
    REQUIRE(s.ok());
    REQUIRE(s->state == SnapshotState::kReady);
    REQUIRE(s->generation == gen);
  }
  auto last = sm.WaitWhileCreating(snap.id, std::chrono::seconds(20));
  CHECK(last->generation == gen);
  CHECK(bed.service->health().automatic_rebuilds() == 0);  // nothing here went through the tracker
  CHECK(Eventually([&] { return sm.ActiveBuilds() == 0; }));
}

TEST_CASE("stats report counts, last error and last use") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  auto& h = bed.service->health();
  REQUIRE(h.RecordFailure(snap.id, snap.generation, "first").ok());
  REQUIRE(h.RecordSuccess(snap.id, snap.generation).ok());
  REQUIRE(h.RecordFailure(snap.id, snap.generation, "second").ok());
  auto s = h.Stats(snap.id);
  REQUIRE(s.ok());
  CHECK(s->success_count == 1);
  CHECK(s->failure_count == 2);
  CHECK(s->consecutive_failures == 1);
  CHECK(s->last_error == "second");
  CHECK(s->last_used_at.has_value());
  CHECK(h.Stats("bad/id").status().code() == StatusCode::kInvalidArgument);
  CHECK(h.RecordFailure(Id::Generate().str(), 1, "x").code() == StatusCode::kNotFound);
  CHECK(h.RecordSuccess(Id::Generate().str(), 1).code() == StatusCode::kNotFound);
  CHECK(h.RecordFailure("../x", 1, "x").code() == StatusCode::kInvalidArgument);
  CHECK(h.options().unhealthy_threshold == 3);
}

TEST_CASE("failed builds are retried automatically with capped exponential backoff") {
  TestBed bed([](ServiceOptions& o) {
    o.health.rebuild_backoff_initial = std::chrono::milliseconds(50);
    o.health.rebuild_backoff_max = std::chrono::milliseconds(200);
  });
  auto img = bed.AddImage();
  bed.vmm->script.fail_snapshots = 4;  // the first build and three retries fail, the fourth retry succeeds
  auto start = std::chrono::steady_clock::now();
  auto created = bed.service->snapshots().CreateSnapshot(img.id);
  REQUIRE(created.ok());
  REQUIRE(Eventually([&] { return bed.service->snapshots().Get(created->id)->state == SnapshotState::kReady; },
                     std::chrono::seconds(20)));
  auto elapsed = std::chrono::steady_clock::now() - start;
  // Delays 50 + 100 + 200 ms (capped) at least.
  CHECK(elapsed >= std::chrono::milliseconds(350));
  CHECK(bed.service->health().automatic_rebuilds() == 4);
  // The build event is written just after the state flips to ready.
  REQUIRE(Eventually([&] { return bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 100})->size() == 5; }));
  auto builds = bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 100});
  int failed = 0;
  for (const auto& e : *builds) failed += e.outcome == "failed";
  CHECK(failed == 4);
  CHECK(builds->back().outcome == "ready");
  CHECK(builds->back().reason == "automatic");
  CHECK(bed.service->snapshots().Get(created->id)->build_failures == 0);
}

TEST_CASE("incompatible schedules a rebuild without counting a failure, auto_rebuild off schedules nothing") {
  SUBCASE("on") {
    TestBed bed;
    auto img = bed.AddImage();
    auto snap = bed.BuildSnapshot(img.id);
    REQUIRE(bed.service->health().RecordIncompatible(snap.id, "vmm.version changed").ok());
    CHECK(bed.service->health().automatic_rebuilds() == 1);
    auto s = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
    CHECK(s->failure_count == 0);
    CHECK(s->generation == 2);
  }
  SUBCASE("off") {
    TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
    auto img = bed.AddImage();
    auto snap = bed.BuildSnapshot(img.id);
    REQUIRE(bed.service->health().RecordIncompatible(snap.id, "x").ok());
    for (int i = 0; i < 3; ++i) REQUIRE(bed.service->health().RecordFailure(snap.id, snap.generation, "x").ok());
    CHECK(bed.service->health().automatic_rebuilds() == 0);
    CHECK(bed.service->snapshots().Get(snap.id)->state == SnapshotState::kUnhealthy);
    CHECK(bed.service->snapshots().ActiveBuilds() == 0);
  }
}

TEST_CASE("automatic rebuilds are single-flight per image") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  bed.vmm->script.build_delay_ms = 300;
  CHECK(bed.service->snapshots().RequestAutomaticRebuild(snap.id));
  CHECK_FALSE(bed.service->snapshots().RequestAutomaticRebuild(snap.id));
  CHECK(bed.service->snapshots().ActiveBuilds() == 1);
  // A manual rebuild of the same snapshot joins the build in flight.
  auto again = bed.service->snapshots().Rebuild(snap.id);
  REQUIRE(again.ok());
  CHECK(again->state == SnapshotState::kCreating);
  CHECK(bed.service->snapshots().ActiveBuilds() == 1);
  auto s = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  CHECK(s->generation == 2);
}
