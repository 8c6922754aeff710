// A full disk (issue 15, "Disk full and a broken store"): how ENOSPC, EDQUOT and SQLITE_FULL become
// ResourceExhausted, and what a build, a restore and a cold boot do when they run out of space (scripted by
// the fake VMM; tests/server/test_disk_full_vm.py does it on a real small file system with QEMU).
#include <doctest/doctest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "store/store_db.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
namespace fs = std::filesystem;

TEST_CASE("ENOSPC and EDQUOT are resource_exhausted, other errno values keep their code") {
  CHECK(util::IsNoSpace(ENOSPC));
  CHECK(util::IsNoSpace(EDQUOT));
  CHECK_FALSE(util::IsNoSpace(EIO));
  auto full = util::ErrnoStatus(ENOSPC, "write /d/x");
  CHECK(full.code() == StatusCode::kResourceExhausted);
  CHECK(full.message() == std::string("write /d/x: ") + std::strerror(ENOSPC));
  CHECK(util::ErrnoStatus(EDQUOT, "write /d/x").code() == StatusCode::kResourceExhausted);
  CHECK(util::ErrnoStatus(EIO, "write /d/x").code() == StatusCode::kUnavailable);
  CHECK(util::ErrnoStatus(EACCES, "open /d/x", StatusCode::kFailedPrecondition).code() ==
        StatusCode::kFailedPrecondition);
  // What QEMU, qemu-img and Firecracker print about a full file system.
  CHECK(util::MentionsNoSpace("qemu-img: /d/overlay.qcow2: Could not write: No space left on device"));
  CHECK(util::MentionsNoSpace("Unable to write to file: Disk quota exceeded"));
  CHECK_FALSE(util::MentionsNoSpace("Unable to write to file: Input/output error"));
}

TEST_CASE("WriteFileDurable on a full device is resource_exhausted and leaves no temporary file") {
  TempDir dir;
  fs::path target = dir.path() / "manifest.json";
  // <path>.tmp is where it writes first: a link to /dev/full makes that write fail with ENOSPC.
  fs::create_symlink("/dev/full", dir.path() / "manifest.json.tmp");
  auto st = util::WriteFileDurable(target, std::string(4096, 'x'));
  CHECK(st.code() == StatusCode::kResourceExhausted);
  CHECK(st.message().find((dir.path() / "manifest.json.tmp").string()) != std::string::npos);
  CHECK(st.message().find(std::strerror(ENOSPC)) != std::string::npos);
  CHECK_FALSE(fs::exists(fs::symlink_status(dir.path() / "manifest.json.tmp")));
  CHECK_FALSE(fs::exists(target));
  CHECK(util::WriteFileDurable(target, "{}").ok());  // space is back: the same call succeeds
}

TEST_CASE("SQLite errors map to codes: a full disk is resource_exhausted, a lock unavailable") {
  auto full = detail::SqliteStatus(SQLITE_FULL, 0, "/d/fcwarm.db", "database or disk is full");
  CHECK(full.code() == StatusCode::kResourceExhausted);
  CHECK(full.message().rfind("database '/d/fcwarm.db': database or disk is full", 0) == 0);
  // An I/O error is a full disk when the OS said ENOSPC (an fsync, a WAL index that cannot grow).
  CHECK(detail::SqliteStatus(SQLITE_IOERR_FSYNC, ENOSPC, "/d/fcwarm.db", "disk I/O error").code() ==
        StatusCode::kResourceExhausted);
  CHECK(detail::SqliteStatus(SQLITE_IOERR_WRITE, EIO, "/d/fcwarm.db", "disk I/O error").code() ==
        StatusCode::kUnavailable);
  auto busy = detail::SqliteStatus(SQLITE_BUSY, 0, "/d/fcwarm.db", "database is locked");
  CHECK(busy.code() == StatusCode::kUnavailable);
  CHECK(busy.message().find("another process") != std::string::npos);
  CHECK(detail::SqliteStatus(SQLITE_READONLY, 0, "/d/fcwarm.db", "attempt to write a readonly database")
            .code() == StatusCode::kUnavailable);
  // Constraint violations stay what they were: a bug, with the message callers already match.
  auto fk =
      detail::SqliteStatus(SQLITE_CONSTRAINT_FOREIGNKEY, 0, "/d/fcwarm.db", "FOREIGN KEY constraint failed");
  CHECK(fk.code() == StatusCode::kInternal);
  CHECK(fk.message() == "database error: FOREIGN KEY constraint failed");
}

TEST_CASE("a build that runs out of disk space fails with resource_exhausted naming its phase") {
  std::mutex mu;  // before the test bed: its builds may call the listener until it is gone
  std::vector<BuildOutcome> outcomes;
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  bed.service->snapshots().AddBuildListener([&](const BuildOutcome& o) {
    std::lock_guard lock(mu);
    outcomes.push_back(o);
  });
  auto img = bed.AddImage();
  bed.vmm->script.snapshots_no_space = 1;
  auto snap = bed.BuildSnapshot(img.id);
  CHECK(snap.state == SnapshotState::kUnhealthy);
  const std::string prefix =
      "build failed in phase snapshotting: resource_exhausted: snapshot: write memory: ";
  CHECK_MESSAGE(snap.last_error.rfind(prefix, 0) == 0, snap.last_error);
  CHECK(snap.last_error.find("No space left on device") != std::string::npos);
  REQUIRE(Eventually([&] {
    std::lock_guard lock(mu);
    return outcomes.size() == 1;
  }));
  CHECK(outcomes[0].code == StatusCode::kResourceExhausted);
  CHECK_FALSE(outcomes[0].ok);
  auto builds = bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 10});
  REQUIRE(builds.ok());
  REQUIRE(builds->size() == 1);
  CHECK(builds->front().outcome == "failed");
  CHECK(builds->front().message == snap.last_error);
  // No partial generation: neither the temporary directory with its half-written file nor a published one.
  CHECK(CountEntries(fs::path(bed.options.snapshots.root_dir) / img.id / snap.id) == 0);
  CHECK(CountEntries(bed.options.snapshots.build_dir) == 0);
  // The next VM boots cold (the snapshot is unhealthy); once space is back a rebuild publishes and restores
  // warm.
  auto cold = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(cold.ok());
  CHECK(cold->boot_method == BootMethod::kCold);
  CHECK(cold->fallback_reason == FallbackReason::kSnapshotUnhealthy);
  REQUIRE(bed.service->snapshots().Rebuild(snap.id).ok());
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(rebuilt.ok());
  CHECK(rebuilt->state == SnapshotState::kReady);
  CHECK(rebuilt->last_error.empty());
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id})->boot_method == BootMethod::kWarm);
}

TEST_CASE("a restore without disk space falls back to cold and counts against no snapshot health") {
  TestBed bed([](ServiceOptions& o) {
    o.health.auto_rebuild = false;
    o.health.unhealthy_threshold = 2;
  });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  bed.vmm->script.restores_no_space = 3;
  for (int i = 0; i < 3; ++i) {
    auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
    REQUIRE(vm.ok());
    CHECK(vm->boot_method == BootMethod::kCold);
    CHECK(vm->fallback_reason == FallbackReason::kRestoreFailed);
    CHECK(vm->snapshot_id.empty());  // no generation stays pinned by a clone that never was
  }
  auto boot = bed.service->store().ListEvents({.kind = EventKind::kBoot, .limit = 1, .newest_first = true});
  REQUIRE(boot.ok());
  CHECK(boot->front().message.find("No space left on device") != std::string::npos);
  auto after = bed.service->snapshots().Get(snap.id);
  CHECK(after->state == SnapshotState::kReady);  // threshold 2, yet three failures: none counted
  CHECK(after->failure_count == 0);
  CHECK(after->consecutive_failures == 0);
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id})->boot_method == BootMethod::kWarm);
}

TEST_CASE("no disk space for the restore nor the cold boot: resource_exhausted, the record says why") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  REQUIRE(bed.BuildSnapshot(img.id).state == SnapshotState::kReady);
  bed.vmm->script.restores_no_space = 1;
  bed.vmm->script.cold_boots_no_space = 1;
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE_FALSE(vm.ok());
  CHECK(vm.status().code() == StatusCode::kResourceExhausted);
  CHECK_MESSAGE(
      vm.status().message().find("after the warm path failed (restore_failed: ") != std::string::npos,
      vm.status().message());
  CHECK(vm.status().message().find("No space left on device") != std::string::npos);
  auto all = bed.service->engine().List(true);
  REQUIRE(all->size() == 1);
  CHECK(all->front().state == VmState::kFailed);
  CHECK(all->front().last_error.find("restore_failed") != std::string::npos);
  CHECK(all->front().last_error.find("No space left on device") != std::string::npos);
  CHECK(CountEntries(bed.options.restore.vm_dir) == 0);
  CHECK(Eventually([&] { return bed.vmm->live == 0; }));
  // Space is back: the next one is warm, without a restart.
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id})->boot_method == BootMethod::kWarm);
}

TEST_CASE("after a build that ran out of disk space the automatic rebuild waits the longest backoff") {
  TestBed bed([](ServiceOptions& o) {
    o.health.rebuild_backoff_initial = std::chrono::milliseconds(10);
    o.health.rebuild_backoff_max = std::chrono::milliseconds(1500);
  });
  auto img = bed.AddImage();
  bed.vmm->script.snapshots_no_space = 1;
  auto t = std::chrono::steady_clock::now();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kUnhealthy);
  // Each attempt would fill the disk again: no retry at the initial 10 ms pace, one at the 1.5 s cap.
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  CHECK(bed.service->health().automatic_rebuilds() == 0);
  REQUIRE(Eventually([&] { return bed.service->health().automatic_rebuilds() == 1; }));
  CHECK(std::chrono::steady_clock::now() - t >= std::chrono::milliseconds(1500));
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(rebuilt.ok());
  CHECK(rebuilt->state == SnapshotState::kReady);
}
