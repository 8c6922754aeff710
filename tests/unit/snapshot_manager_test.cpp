#include <doctest/doctest.h>
#include <signal.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include <filesystem>
#include <fstream>

#include "store/store_db.hpp"
#include "support/test_env.hpp"
#include "util/process.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
namespace fs = std::filesystem;

TEST_CASE("a build goes through its phases and publishes a generation with a manifest") {
  TestBed bed;
  auto img = bed.AddImage();
  auto created = bed.service->snapshots().CreateSnapshot(img.id);
  REQUIRE(created.ok());
  CHECK(created->state == SnapshotState::kCreating);
  CHECK(created->phase == BuildPhase::kQueued);
  auto snap = bed.service->snapshots().WaitWhileCreating(created->id, std::chrono::seconds(20));
  REQUIRE(snap.ok());
  REQUIRE_MESSAGE(snap->state == SnapshotState::kReady, snap->last_error);
  CHECK(snap->phase == BuildPhase::kDone);
  CHECK(snap->generation == 1);
  CHECK(snap->generation_dir == (fs::path(bed.options.snapshots.root_dir) / img.id / snap->id / "gen-1").string());
  CHECK(fs::exists(fs::path(snap->generation_dir) / "manifest.json"));
  CHECK(snap->files.size() == 2);
  for (const auto& f : snap->files) {
    CHECK(f.xxh3.size() == 32);
    CHECK(fs::file_size(fs::path(snap->generation_dir) / f.name) == f.size);
  }
  CHECK(snap->size_bytes >= 64 * 1024);
  CHECK(snap->compatibility_key.size() == 32);
  CHECK(snap->compatibility.at("vmm.kind") == "fake");
  CHECK(snap->compatibility.count("guest.kernel") == 1);
  CHECK(snap->compatibility.at("vm.memory_mib") == "128");
  // The build VM is gone, no temp dir or work dir remains. (The state flips to ready when the generation is
  // published; the build job stops its VM, removes its work directory and writes its event after that.)
  CHECK(Eventually([&] { return bed.vmm->live == 0; }));
  CHECK(Eventually([&] { return CountEntries(bed.options.snapshots.build_dir) == 0; }));
  for (const auto& e : fs::directory_iterator(fs::path(snap->generation_dir).parent_path())) {
    CHECK(e.path().filename().string().rfind(".tmp", 0) != 0);
  }
  REQUIRE(Eventually([&] { return bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 10})->size() == 1; }));
  auto events = bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 10});
  REQUIRE(events->size() == 1);
  CHECK(events->front().outcome == "ready");
  CHECK(events->front().timings.count("booting") == 1);
  CHECK(events->front().timings.count("snapshotting") == 1);
}

TEST_CASE("a build that crashes midway ends unhealthy and leaves nothing behind") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  bed.vmm->script.fail_snapshots = 1;
  auto snap = bed.BuildSnapshot(img.id);
  CHECK(snap.state == SnapshotState::kUnhealthy);
  CHECK(snap.last_error.find("snapshotting") != std::string::npos);
  CHECK(snap.last_error.find("died") != std::string::npos);
  CHECK(snap.build_failures == 1);
  CHECK(snap.generation == 0);
  CHECK(Eventually([&] { return bed.vmm->live == 0; }));
  CHECK(CountEntries(bed.options.snapshots.build_dir) == 0);
  CHECK(CountEntries(fs::path(bed.options.snapshots.root_dir) / img.id / snap.id) == 0);
  auto procs = detail::DbOf(bed.service->store()).With([](SQLite::Database& db) -> Result<int64_t> {
    return db.execAndGet("SELECT COUNT(*) FROM processes").getInt64();
  });
  CHECK(*procs == 0);
}

TEST_CASE("a cold boot failure and a runtime that never gets ready fail the build with the phase named") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  bed.vmm->script.fail_cold_boots = 1;
  auto snap = bed.BuildSnapshot(img.id);
  CHECK(snap.state == SnapshotState::kUnhealthy);
  CHECK(snap.last_error.find("booting") != std::string::npos);
}

TEST_CASE("build timings name every finished phase, a failure names the phase it failed in") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  REQUIRE(bed.BuildSnapshot(img.id).state == SnapshotState::kReady);
  bed.vmm->script.fail_snapshots = 1;
  REQUIRE(bed.BuildSnapshot(img.id).state == SnapshotState::kUnhealthy);
  std::vector<Event> builds;
  REQUIRE(Eventually([&] {
    builds = *bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 10});
    return builds.size() == 2;
  }));
  auto keys = [](const Event& e) {
    std::vector<std::string> k;
    for (const auto& [name, ms] : e.timings) k.push_back(name);
    return k;
  };
  CHECK(builds[0].outcome == "ready");
  CHECK(builds[0].reason == "requested");
  CHECK(builds[0].message == "generation 1");
  CHECK(keys(builds[0]) == std::vector<std::string>{"booting", "parking", "pausing", "preloading",
                                                    "publishing", "quiescing", "snapshotting", "total",
                                                    "verifying", "waiting_runtime"});
  CHECK(builds[1].outcome == "failed");
  CHECK(builds[1].message.rfind("build failed in phase snapshotting: ", 0) == 0);
  CHECK(keys(builds[1]) == std::vector<std::string>{"booting", "parking", "pausing", "preloading", "quiescing",
                                                    "total", "waiting_runtime"});
}

TEST_CASE("shutting down during a build cancels it at the next phase and records why") {
  TempDir keep;
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; }, (keep.path() / "fcwarm.db").string());
  auto img = bed.AddImage();
  bed.vmm->script.build_delay_ms = 1000;
  auto created = bed.service->snapshots().CreateSnapshot(img.id);
  REQUIRE(created.ok());
  REQUIRE(
      Eventually([&] { return bed.service->snapshots().Get(created->id)->phase == BuildPhase::kBooting; }));
  bed.Reopen();
  auto snap = bed.service->snapshots().Get(created->id);
  REQUIRE(snap.ok());
  CHECK(snap->state == SnapshotState::kUnhealthy);
  CHECK(snap->last_error ==
        "build failed in phase waiting_runtime: cancelled: fcwarm shut down during the build");
  CHECK(snap->build_failures == 1);
}

TEST_CASE("snapshot limits per image and in total") {
  TestBed bed([](ServiceOptions& o) {
    o.snapshots.max_snapshots_per_image = 1;
    o.snapshots.max_snapshots_total = 2;
  });
  auto a = bed.AddImage("a");
  auto b = bed.AddImage("b");
  auto c = bed.AddImage("c");
  REQUIRE(bed.service->snapshots().CreateSnapshot(a.id).ok());
  auto again = bed.service->snapshots().CreateSnapshot(a.id);
  CHECK(again.status().code() == StatusCode::kResourceExhausted);
  CHECK(again.status().message().find("max_snapshots_per_image") != std::string::npos);
  REQUIRE(bed.service->snapshots().CreateSnapshot(b.id).ok());
  auto total = bed.service->snapshots().CreateSnapshot(c.id);
  CHECK(total.status().code() == StatusCode::kResourceExhausted);
  CHECK(bed.service->snapshots().List({})->size() == 2);
}

TEST_CASE("bad snapshot input is refused and nothing is written") {
  TestBed bed;
  auto& sm = bed.service->snapshots();
  CHECK(sm.CreateSnapshot("../../etc").status().code() == StatusCode::kInvalidArgument);
  CHECK(sm.CreateSnapshot("../../etc").status().message().find("runtime_image_id") == 0);
  CHECK(sm.CreateSnapshot(Id::Generate().str()).status().code() == StatusCode::kNotFound);
  CHECK(sm.Get("a/b").status().code() == StatusCode::kInvalidArgument);
  CHECK(sm.Get(Id::Generate().str()).status().code() == StatusCode::kNotFound);
  CHECK(sm.Rebuild("..").status().code() == StatusCode::kInvalidArgument);
  CHECK(sm.Rebuild(Id::Generate().str()).status().code() == StatusCode::kNotFound);
  CHECK(sm.Delete(std::string("x\0y", 3)).code() == StatusCode::kInvalidArgument);
  CHECK(sm.Delete(Id::Generate().str()).code() == StatusCode::kNotFound);
  CHECK(sm.List({.runtime_image_id = "/"}).status().code() == StatusCode::kInvalidArgument);
  CHECK(sm.List({})->empty());
  CHECK(CountEntries(bed.options.snapshots.root_dir) == 0);
}

TEST_CASE("rebuild makes a new generation and collects the old one, delete is soft") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  auto old_dir = snap.generation_dir;
  auto rebuilt = bed.service->snapshots().Rebuild(snap.id);
  REQUIRE(rebuilt.ok());
  auto done = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(done->state == SnapshotState::kReady);
  CHECK(done->generation == 2);
  CHECK(done->id == snap.id);
  CHECK(fs::exists(done->generation_dir));
  CHECK(Eventually([&] { return !fs::exists(old_dir); }));

  REQUIRE(bed.service->snapshots().Delete(snap.id).ok());
  CHECK(bed.service->snapshots().Get(snap.id)->state == SnapshotState::kDeleted);
  CHECK(bed.service->snapshots().List({})->empty());
  CHECK(bed.service->snapshots().List({.include_deleted = true})->size() == 1);
  CHECK(bed.service->snapshots().List({.state = SnapshotState::kDeleted})->size() == 1);
  CHECK_FALSE(fs::exists(done->generation_dir));
  CHECK(bed.service->snapshots().Rebuild(snap.id).status().code() == StatusCode::kFailedPrecondition);
  CHECK(bed.service->snapshots().Delete(snap.id).ok());  // idempotent
}

TEST_CASE("a rebuild keeps the generation a live VM maps until that VM is destroyed") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  REQUIRE(vm->boot_method == BootMethod::kWarm);
  CHECK(vm->generation == 1);
  REQUIRE(bed.service->snapshots().Rebuild(snap.id).ok());
  auto done = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(done->generation == 2);
  REQUIRE(bed.service->snapshots().CollectGarbage().ok());
  CHECK(fs::exists(snap.generation_dir));  // still mapped by the VM
  REQUIRE(bed.service->engine().Destroy(vm->id).ok());
  CHECK_FALSE(fs::exists(snap.generation_dir));
  CHECK(fs::exists(done->generation_dir));
}

TEST_CASE("startup reconciliation after a simulated crash") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  auto ready = bed.BuildSnapshot(img.id);
  // Simulate what a crash leaves: a snapshot stuck in `creating`, a temp generation, a build work dir,
  // a VMM process recorded in the store, and a VM the dead process owned.
  util::SpawnOptions so;
  so.argv = {"sleep", "3600"};
  so.die_with_parent = false;
  auto orphan = util::Spawn(so);
  REQUIRE(orphan.ok());
  auto stuck_id = Id::Generate().str();
  auto vm_id = Id::Generate().str();
  auto vm_dir = fs::path(bed.options.restore.vm_dir) / vm_id;
  fs::create_directories(vm_dir);
  WriteFile(vm_dir / "overlay.qcow2", "x");
  auto tmp = fs::path(bed.options.snapshots.root_dir) / img.id / stuck_id / ".tmp-gen-1";
  WriteFile(tmp / "memory.bin", "partial");
  fs::create_directories(fs::path(bed.options.snapshots.build_dir) / (stuck_id + "-gen-1"));
  auto st = detail::DbOf(bed.service->store()).With([&](SQLite::Database& db) -> Status {
    SQLite::Statement s(db, "INSERT INTO runtime_snapshots(id, runtime_image_id, state, phase, created_at, updated_at) "
                            "VALUES (?, ?, 'creating', 'snapshotting', 99999999999999, 1)");
    s.bind(1, stuck_id);
    s.bind(2, img.id);
    s.exec();
    SQLite::Statement p(db, "INSERT INTO processes(pid, start_time, role, owner_id, created_at) VALUES (?,?,'build','x',0)");
    p.bind(1, orphan->pid);
    p.bind(2, static_cast<int64_t>(orphan->start_time));
    p.exec();
    // A stale row whose pid now belongs to another process (start time differs) must not be killed.
    SQLite::Statement p2(db, "INSERT INTO processes(pid, start_time, role, owner_id, created_at) VALUES (?, 1, 'vm','y',0)");
    p2.bind(1, static_cast<int>(::getpid()));
    p2.exec();
    SQLite::Statement v(db, "INSERT INTO vms(id, runtime_image_id, state, boot_method, work_dir, created_at, updated_at) "
                            "VALUES (?, ?, 'running', 'warm', ?, 1, 1)");
    v.bind(1, vm_id);
    v.bind(2, img.id);
    v.bind(3, vm_dir.string());
    v.exec();
    SQLite::Statement a(db, "INSERT INTO address_allocations(idx, vm_id, mac, ip_cidr, allocated_at) VALUES (7, ?, 'm', 'i', 0)");
    a.bind(1, vm_id);
    a.exec();
    return Status::Ok();
  });
  REQUIRE(st.ok());

  bed.Reopen();
  const auto& report = bed.service->snapshots().reconcile_report();
  CHECK(report.interrupted_builds == 1);
  CHECK(report.killed_processes == 1);
  CHECK(report.lost_vms == 0);  // a running VM is the engine's to adopt or lose (live restore)
  CHECK(bed.service->engine().adoption_report().lost == 1);
  CHECK(bed.service->engine().adoption_report().adopted == 0);
  CHECK(report.removed_temp_dirs >= 2);
  auto stuck = bed.service->snapshots().Get(stuck_id);
  CHECK(stuck->state == SnapshotState::kUnhealthy);
  CHECK(stuck->last_error == "interrupted");
  CHECK_FALSE(fs::exists(tmp));
  CHECK(CountEntries(bed.options.snapshots.build_dir) == 0);
  CHECK_FALSE(util::IsSameProcess(orphan->pid, orphan->start_time));
  CHECK(bed.service->engine().Get(vm_id)->state == VmState::kLost);
  CHECK_FALSE(fs::exists(vm_dir));
  // The ready snapshot is untouched and still usable.
  CHECK(bed.service->snapshots().Get(ready.id)->state == SnapshotState::kReady);
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  // The stuck snapshot is newer and unhealthy, so this is cold with snapshot_unhealthy.
  CHECK(vm->fallback_reason == FallbackReason::kSnapshotUnhealthy);
}

TEST_CASE("one Service owns a store at a time") {
  TestBed bed;
  auto second = Service::Open(bed.options, bed.vmms);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == StatusCode::kFailedPrecondition);
  CHECK(second.status().message().find("in use by another fcwarm process") != std::string::npos);
  bed.service.reset();
  auto third = Service::Open(bed.options, bed.vmms);
  CHECK(third.ok());
}
