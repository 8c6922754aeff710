#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
namespace fs = std::filesystem;

namespace {
void FlipByte(const fs::path& file, size_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

Event LastBoot(TestBed& bed) {
  auto ev = bed.service->store().ListEvents({.kind = EventKind::kBoot, .limit = 1, .newest_first = true});
  REQUIRE(ev.ok());
  REQUIRE_FALSE(ev->empty());
  return ev->front();
}
}  // namespace

TEST_CASE("warm restore: boot_method warm, per-step timings, unique identity, success counted") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  std::set<std::string> hostnames, addresses, macs;
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto vm = bed.service->engine().Provision({.runtime_image_id = img.id, .name = "c" + std::to_string(i)});
    REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
    CHECK(vm->boot_method == BootMethod::kWarm);
    CHECK(vm->fallback_reason == FallbackReason::kNone);
    CHECK(vm->state == VmState::kRunning);
    CHECK(vm->snapshot_id == snap.id);
    for (const char* step : {"lookup", "verify_checksums", "restore", "agent", "identity", "runtime_verify", "total"}) {
      CHECK_MESSAGE(vm->timings.count(step) == 1, step);
    }
    hostnames.insert(vm->hostname);
    addresses.insert(vm->address);
    macs.insert(vm->mac);
    ids.push_back(vm->id);
    CHECK(bed.vmm->identities().at(vm->id) == vm->hostname);
  }
  CHECK(hostnames.size() == 3);
  CHECK(addresses.size() == 3);
  CHECK(macs.size() == 3);
  CHECK(addresses.count("10.213.0.2/30") == 1);
  auto after = bed.service->snapshots().Get(snap.id);
  CHECK(after->success_count == 3);
  CHECK(after->last_used_at.has_value());
  CHECK(bed.vmm->restores == 3);
  auto ev = LastBoot(bed);
  CHECK(ev.outcome == "warm");
  CHECK(ev.vm_id == ids.back());
  for (const auto& id : ids) REQUIRE(bed.service->engine().Destroy(id).ok());
  CHECK(Eventually([&] { return bed.vmm->live == 0; }));
  CHECK(bed.service->engine().Get(ids[0])->state == VmState::kDestroyed);
  CHECK(CountEntries(bed.options.restore.vm_dir) == 0);
}

TEST_CASE("no_snapshot: cold boot, and the measured cold time feeds the warm log line") {
  TestBed bed;
  auto img = bed.AddImage();
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  CHECK(vm->boot_method == BootMethod::kCold);
  CHECK(vm->fallback_reason == FallbackReason::kNoSnapshot);
  CHECK(vm->timings.count("cold_boot") == 1);
  CHECK(LastBoot(bed).reason == "no_snapshot");
  CHECK(bed.service->engine().MeasuredColdBootMs(img.id).has_value());
  bed.BuildSnapshot(img.id);
  auto warm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(warm->boot_method == BootMethod::kWarm);
  CHECK(LastBoot(bed).message.find("measured cold boot mean") != std::string::npos);
}

TEST_CASE("deleting the snapshot makes the next boot cold with no_snapshot") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(bed.service->snapshots().Delete(snap.id).ok());
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  CHECK(vm->fallback_reason == FallbackReason::kNoSnapshot);
}

TEST_CASE("wait for a creating snapshot: ready inside the window gives warm") {
  TestBed bed;
  auto img = bed.AddImage();
  bed.vmm->script.build_delay_ms = 300;
  auto snap = bed.service->snapshots().CreateSnapshot(img.id);
  REQUIRE(snap.ok());
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id, .wait_for_creating = std::chrono::seconds(10)});
  REQUIRE(vm.ok());
  CHECK(vm->boot_method == BootMethod::kWarm);
  CHECK(vm->timings.at("wait_creating") >= 100);
  CHECK(vm->timings.at("wait_creating") < 10000);
}

TEST_CASE("wait for a creating snapshot: still creating after the window gives cold snapshot_creating") {
  TestBed bed;
  auto img = bed.AddImage();
  bed.vmm->script.build_delay_ms = 3000;
  REQUIRE(bed.service->snapshots().CreateSnapshot(img.id).ok());
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id, .wait_for_creating = std::chrono::milliseconds(100)});
  REQUIRE(vm.ok());
  CHECK(vm->boot_method == BootMethod::kCold);
  CHECK(vm->fallback_reason == FallbackReason::kSnapshotCreating);
  CHECK(vm->timings.at("wait_creating") >= 90);
  CHECK(vm->timings.at("wait_creating") < 2500);
}

TEST_CASE("snapshot_unhealthy: a failed build is not used") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  bed.vmm->script.fail_snapshots = 1;
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kUnhealthy);
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  CHECK(vm->fallback_reason == FallbackReason::kSnapshotUnhealthy);
  CHECK(bed.vmm->restores == 0);
}

TEST_CASE("incompatible: a key mismatch is cold, counts no failure, and schedules a rebuild") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  bed.vmm->SetHostVersion("2.0");
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id, .wait_for_creating = std::chrono::milliseconds(0)});
  REQUIRE(vm.ok());
  CHECK(vm->fallback_reason == FallbackReason::kIncompatible);
  auto ev = LastBoot(bed);
  CHECK(ev.message.find("vmm.version '1.0' -> '2.0'") != std::string::npos);
  CHECK(bed.service->snapshots().Get(snap.id)->failure_count == 0);
  CHECK(bed.service->health().automatic_rebuilds() == 1);
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(rebuilt->state == SnapshotState::kReady);
  CHECK(rebuilt->compatibility.at("vmm.version") == "2.0");
  auto warm = bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(warm->boot_method == BootMethod::kWarm);
}

TEST_CASE("a changed guest kernel file also makes the snapshot incompatible") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  bed.BuildSnapshot(img.id);
  WriteFile(img.kernel_path, "a different kernel");
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(vm->fallback_reason == FallbackReason::kIncompatible);
  CHECK(LastBoot(bed).message.find("guest.kernel") != std::string::npos);
}

TEST_CASE("corrupt: one flipped byte is detected, not restored, and counted") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  FlipByte(fs::path(snap.generation_dir) / "memory.bin", 1000);
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  CHECK(vm->fallback_reason == FallbackReason::kCorrupt);
  CHECK(bed.vmm->restores == 0);
  auto after = bed.service->snapshots().Get(snap.id);
  CHECK(after->failure_count == 1);
  CHECK(after->consecutive_failures == 1);
  CHECK(after->last_error.find("memory.bin checksum mismatch") != std::string::npos);
}

TEST_CASE("corrupt: a flipped byte with the mtime restored is caught by the periodic full verification") {
  TestBed bed([](ServiceOptions& o) {
    o.health.auto_rebuild = false;
    o.restore.full_verify_every = 2;
  });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  auto file = fs::path(snap.generation_dir) / "memory.bin";
  auto mtime = fs::last_write_time(file);
  FlipByte(file, 5);
  fs::last_write_time(file, mtime);
  auto first = bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(first->boot_method == BootMethod::kWarm);  // cheap path: size and mtime match
  auto second = bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(second->fallback_reason == FallbackReason::kCorrupt);
}

TEST_CASE("corrupt: a missing file or a tampered manifest") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  fs::remove(fs::path(snap.generation_dir) / "vmstate.json");
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id})->fallback_reason == FallbackReason::kCorrupt);
  WriteFile(fs::path(snap.generation_dir) / "manifest.json", "{}");
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id})->fallback_reason == FallbackReason::kCorrupt);
}

TEST_CASE("restore_failed and verify_failed fall back to cold and leave no clone behind") {
  TestBed bed([](ServiceOptions& o) { o.health.auto_rebuild = false; });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  bed.vmm->script.fail_restores = 1;
  auto a = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(a.ok());
  CHECK(a->fallback_reason == FallbackReason::kRestoreFailed);
  CHECK(a->boot_method == BootMethod::kCold);
  bed.vmm->script.fail_verifies = 1;
  auto b = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(b.ok());
  CHECK(b->fallback_reason == FallbackReason::kVerifyFailed);
  CHECK(b->snapshot_id.empty());  // unpinned: the record references no generation
  // The VMM process of a restored clone dies before verification.
  bed.vmm->script.kill_after_restore = 1;
  auto c = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(c.ok());
  CHECK(c->fallback_reason == FallbackReason::kVerifyFailed);
  // Exactly the three cold VMs are alive; the failed clones were stopped.
  CHECK(Eventually([&] { return bed.vmm->live == 3; }));
  CHECK(bed.service->snapshots().Get(snap.id)->failure_count == 3);
  CHECK(bed.service->snapshots().Get(snap.id)->state == SnapshotState::kUnhealthy);  // threshold 3
}

TEST_CASE("the consecutive-failure threshold and its reset by a success") {
  TestBed bed([](ServiceOptions& o) {
    o.health.auto_rebuild = false;
    o.health.unhealthy_threshold = 3;
  });
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  bed.vmm->script.fail_restores = 2;
  (void)bed.service->engine().Provision({.runtime_image_id = img.id});
  (void)bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(bed.service->snapshots().Get(snap.id)->consecutive_failures == 2);
  auto ok = bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(ok->boot_method == BootMethod::kWarm);
  auto s = bed.service->snapshots().Get(snap.id);
  CHECK(s->consecutive_failures == 0);
  CHECK(s->failure_count == 2);
  CHECK(s->state == SnapshotState::kReady);
  bed.vmm->script.fail_restores = 3;
  for (int i = 0; i < 3; ++i) (void)bed.service->engine().Provision({.runtime_image_id = img.id});
  s = bed.service->snapshots().Get(snap.id);
  CHECK(s->state == SnapshotState::kUnhealthy);
  CHECK(s->consecutive_failures == 3);
  auto cold = bed.service->engine().Provision({.runtime_image_id = img.id});
  CHECK(cold->fallback_reason == FallbackReason::kSnapshotUnhealthy);
}

TEST_CASE("unhealthy triggers an automatic rebuild, after which restores are warm again") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  bed.vmm->script.fail_restores = 3;
  for (int i = 0; i < 3; ++i) (void)bed.service->engine().Provision({.runtime_image_id = img.id, .wait_for_creating = std::chrono::milliseconds(0)});
  CHECK(bed.service->health().automatic_rebuilds() == 1);
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(rebuilt->state == SnapshotState::kReady);
  CHECK(rebuilt->generation == 2);
  CHECK(rebuilt->consecutive_failures == 0);
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id})->boot_method == BootMethod::kWarm);
}

TEST_CASE("cold boot failure after a fallback is an error and the VM record says failed") {
  TestBed bed;
  auto img = bed.AddImage();
  bed.vmm->script.fail_cold_boots = 1;
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE_FALSE(vm.ok());
  CHECK(vm.status().code() == StatusCode::kUnavailable);
  auto all = bed.service->engine().List(true);
  REQUIRE(all->size() == 1);
  CHECK(all->front().state == VmState::kFailed);
  CHECK(CountEntries(bed.options.restore.vm_dir) == 0);
}

TEST_CASE("provision input is validated") {
  TestBed bed;
  auto& e = bed.service->engine();
  CHECK(e.Provision({.runtime_image_id = "../x"}).status().code() == StatusCode::kInvalidArgument);
  CHECK(e.Provision({.runtime_image_id = Id::Generate().str()}).status().code() == StatusCode::kNotFound);
  auto img = bed.AddImage();
  auto bad_name = e.Provision({.runtime_image_id = img.id, .name = "a/b"});
  CHECK(bad_name.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad_name.status().message().find("name") == 0);
  CHECK(e.Get("nope").status().code() == StatusCode::kInvalidArgument);
  CHECK(e.Destroy(Id::Generate().str()).code() == StatusCode::kNotFound);
  CHECK(e.List(true)->empty());
}

TEST_CASE("a caller-chosen vm id is used, validated and unique") {
  TestBed bed;
  auto img = bed.AddImage();
  auto id = Id::Generate().str();
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id, .vm_id = id});
  REQUIRE(vm.ok());
  CHECK(vm->id == id);
  auto again = bed.service->engine().Provision({.runtime_image_id = img.id, .vm_id = id});
  CHECK(again.status().code() == StatusCode::kAlreadyExists);
  auto bad = bed.service->engine().Provision({.runtime_image_id = img.id, .vm_id = "../x"});
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad.status().message().find("vm_id") == 0);
}

TEST_CASE("ServiceOptions::UnderDirectory puts every file under one absolute directory") {
  auto o = ServiceOptions::UnderDirectory("/srv/fcw");
  CHECK(o.store.path == "/srv/fcw/fcwarm.db");
  CHECK(o.snapshots.root_dir == "/srv/fcw/snapshots");
  CHECK(o.snapshots.build_dir == "/srv/fcw/build");
  CHECK(o.restore.vm_dir == "/srv/fcw/vms");
  auto rel = ServiceOptions::UnderDirectory("data");
  CHECK(rel.store.path == (fs::current_path() / "data" / "fcwarm.db").string());
  CHECK(rel.restore.wait_for_creating == RestoreOptions{}.wait_for_creating);  // everything else default
}

TEST_CASE("network settings: egress, resolvers and registry settings reach every VM, invalid ones stop Open") {
  TestBed bed([](ServiceOptions& o) {
    o.restore.egress = "10.214.0.0/16";
    o.restore.dns = {"192.0.2.53"};
    o.restore.registry_mirrors = {"http://10.214.7.2:5000"};
    o.restore.insecure_registries = {"10.214.7.2:5000"};
  });
  auto dock = bed.AddImage("dock", "docker");
  auto plain = bed.AddImage("plain");
  auto d = bed.service->engine().Provision({.runtime_image_id = dock.id});
  REQUIRE_MESSAGE(d.ok(), d.status().ToString());
  auto p = bed.service->engine().Provision({.runtime_image_id = plain.id});
  REQUIRE(p.ok());
  auto nets = bed.vmm->networks();
  REQUIRE(nets.count(d->id) == 1);
  CHECK(nets[d->id].egress == "10.214.0.0/16");
  CHECK(nets[d->id].egress_allow == std::vector<std::string>{"10.214.7.2"});  // the mirror's address
  CHECK(nets[d->id].dns == std::vector<std::string>{"192.0.2.53"});
  CHECK(nets[p->id].egress == "10.214.0.0/16");  // egress is per VM, whatever its runtime
  auto ids = bed.vmm->identity_requests();
  REQUIRE(ids.count(d->id) == 1);
  CHECK(ids[d->id].dns == std::vector<std::string>{"192.0.2.53"});
  REQUIRE(ids[d->id].docker.has_value());
  CHECK(ids[d->id].docker->registry_mirrors == std::vector<std::string>{"http://10.214.7.2:5000"});
  CHECK(ids[d->id].docker->insecure_registries == std::vector<std::string>{"10.214.7.2:5000"});
  // A VM-only image gets neither resolvers nor Docker settings (it may have no writable /etc, and no daemon).
  CHECK(ids[p->id].dns.empty());
  CHECK_FALSE(ids[p->id].docker.has_value());

  auto open_with = [](std::function<void(RestoreOptions&)> f) {
    TempDir dir;
    auto opts = ServiceOptions::UnderDirectory(dir.path().string());
    f(opts.restore);
    auto vmms = std::make_shared<VmmRegistry>();
    return Service::Open(opts, vmms).status();
  };
  auto expect = [&](std::function<void(RestoreOptions&)> f, const std::string& needle) {
    auto st = open_with(std::move(f));
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK_MESSAGE(st.message().find(needle) != std::string::npos, st.message());
  };
  expect([](RestoreOptions& r) { r.egress = "some"; }, "egress");
  expect([](RestoreOptions& r) { r.dns = {"not-an-ip"}; }, "dns[0]");
  expect([](RestoreOptions& r) { r.registry_mirrors = {"ftp://x"}; }, "registry_mirrors[0]");
  expect([](RestoreOptions& r) { r.registry_mirrors = {"http://10.0.0.1:5000/path"}; }, "registry_mirrors[0]");
  expect([](RestoreOptions& r) { r.insecure_registries = {"a b"}; }, "insecure_registries[0]");
  CHECK(open_with([](RestoreOptions& r) { r.egress = "none"; }).ok());
}
