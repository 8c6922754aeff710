// The clone pool (RestoreOptions::pool) against the fake VMM: take, refill, drain, dead clones, idle expiry,
// pool size 0, crash reconciliation, and what a request that cannot use the pool gets.
#include <doctest/doctest.h>
#include <signal.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <thread>

#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::function<void(ServiceOptions&)> WithPool(unsigned n, std::chrono::milliseconds idle = 300s) {
  return [n, idle](ServiceOptions& o) {
    o.restore.pool = {{"img", n}};
    o.restore.pool_idle_timeout = idle;
  };
}

PoolStatus PoolOf(TestBed& bed) {
  auto p = bed.service->engine().Pool();
  REQUIRE(p.size() == 1);
  return p.front();
}

std::vector<VmRecord> Pooled(TestBed& bed) {
  auto all = bed.service->engine().List(false);
  REQUIRE(all.ok());
  std::vector<VmRecord> out;
  for (auto& v : *all) {
    if (v.state == VmState::kPooled) out.push_back(v);
  }
  return out;
}

// True once a killed process is a zombie or gone (the kill has landed).
bool Died(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return true;
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z' || stat[close + 2] == 'X';
}

int64_t Discarded(TestBed& bed, const std::string& reason) {
  auto p = PoolOf(bed);
  auto it = p.discarded.find(reason);
  return it == p.discarded.end() ? 0 : it->second;
}

}  // namespace

TEST_CASE("pool: a request takes a pooled clone (no restore step) and the pool refills") {
  TestBed bed(WithPool(2));
  auto img = bed.AddImage("img");
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 2; }));
  CHECK(bed.vmm->restores == 2);
  auto pooled = Pooled(bed);
  REQUIRE(pooled.size() == 2);
  std::set<std::string> pooled_ids;
  for (const auto& v : pooled) {
    pooled_ids.insert(v.id);
    CHECK(v.boot_method == BootMethod::kWarm);
    CHECK(v.snapshot_id == snap.id);
    CHECK(v.timings.count("restore") == 1);  // the fill's own steps
    CHECK_FALSE(v.address.empty());
  }
  auto status = PoolOf(bed);
  CHECK(status.runtime_image_id == img.id);
  CHECK(status.target == 2);
  for (const auto& c : status.clones) {
    CHECK(pooled_ids.count(c.vm_id) == 1);
    CHECK(c.pid > 0);
    CHECK(c.pss_bytes.has_value());
  }
  // Pooled VMs belong to the pool: a caller cannot stop or destroy one.
  CHECK(bed.service->engine().Destroy(*pooled_ids.begin()).code() == StatusCode::kFailedPrecondition);

  const std::string wanted = Id::Generate().str();
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id, .vm_id = wanted, .name = "taken"});
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  CHECK(vm->id == wanted);
  CHECK(vm->name == "taken");
  CHECK(vm->state == VmState::kRunning);
  CHECK(vm->boot_method == BootMethod::kWarm);
  CHECK(vm->pooled);
  CHECK(pooled_ids.count(vm->instance_id) == 1);  // resources keep the clone's name
  CHECK(vm->hostname == "fcw-" + vm->instance_id.substr(0, 8));
  CHECK(bed.vmm->identities().at(vm->instance_id) == vm->hostname);
  CHECK(vm->timings.count("restore") == 0);
  CHECK(vm->timings.count("pool_take") == 1);
  CHECK(vm->timings.count("agent") == 1);
  CHECK(vm->timings.count("total") == 1);
  CHECK(bed.service->engine().Get(vm->instance_id).status().code() == StatusCode::kNotFound);  // re-keyed
  REQUIRE(bed.service->engine().Handle(wanted).ok());
  CHECK((*bed.service->engine().Handle(wanted))->IsAlive());
  // The id is in use now, by the taken clone.
  CHECK(bed.service->engine().Provision({.runtime_image_id = img.id, .vm_id = wanted}).status().code() ==
        StatusCode::kAlreadyExists);

  // Refill: a third restore brings the pool back to two.
  CHECK(Eventually([&] { return PoolOf(bed).clones.size() == 2 && bed.vmm->restores == 3; }));
  CHECK(PoolOf(bed).taken == 1);
  // Destroying the taken VM releases what is named after its instance id (the work directory).
  REQUIRE(bed.service->engine().Destroy(wanted).ok());
  CHECK_FALSE(fs::exists(fs::path(bed.options.restore.vm_dir) / vm->instance_id));
  CHECK(CountEntries(bed.options.restore.vm_dir) == 2);  // the two pooled clones
  auto ev = bed.service->store().ListEvents({.kind = EventKind::kBoot, .limit = 1, .newest_first = true});
  REQUIRE(ev.ok());
  REQUIRE_FALSE(ev->empty());
  CHECK(ev->front().vm_id == wanted);
  CHECK(ev->front().outcome == "warm");
}

TEST_CASE("pool: without a given id the VM keeps the clone's id, and a miss restores as usual") {
  TestBed bed(WithPool(1));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  auto clone_id = PoolOf(bed).clones.front().vm_id;
  auto a = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(a.ok());
  CHECK(a->id == clone_id);
  CHECK(a->instance_id == clone_id);
  CHECK(a->pooled);
  // Right away the pool is (most likely) refilling: the next request restores itself or takes the new clone.
  auto b = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(b.ok());
  CHECK(b->boot_method == BootMethod::kWarm);
  CHECK(b->id != a->id);
  CHECK((b->pooled ? b->timings.count("pool_take") : b->timings.count("restore")) == 1);
}

TEST_CASE("pool: force_cold and published ports never take a pooled clone") {
  TestBed bed(WithPool(1));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  auto cold = bed.service->engine().Provision({.runtime_image_id = img.id, .force_cold = true});
  REQUIRE(cold.ok());
  CHECK(cold->boot_method == BootMethod::kCold);
  CHECK_FALSE(cold->pooled);
  auto ported = bed.service->engine().Provision({.runtime_image_id = img.id, .ports = {"127.0.0.1:18999:80/tcp"}});
  REQUIRE_MESSAGE(ported.ok(), ported.status().ToString());
  CHECK(ported->boot_method == BootMethod::kWarm);
  CHECK_FALSE(ported->pooled);
  CHECK(ported->timings.count("restore") == 1);
  CHECK(PoolOf(bed).clones.size() == 1);
  CHECK(PoolOf(bed).taken == 0);
}

TEST_CASE("pool: a rebuilt snapshot drains the pool, which refills from the new generation") {
  TestBed bed(WithPool(2));
  auto img = bed.AddImage("img");
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 2; }));
  std::vector<std::string> old_ids;
  for (const auto& c : PoolOf(bed).clones) old_ids.push_back(c.vm_id);
  bed.vmm->script.build_delay_ms = 300;  // a rebuild long enough to see the drained pool
  REQUIRE(bed.service->snapshots().Rebuild(snap.id).ok());
  CHECK(Eventually([&] { return Discarded(bed, "rebuilt") == 2; }));
  for (const auto& id : old_ids) {
    CHECK(Eventually([&] { return bed.service->engine().Get(id)->state == VmState::kDestroyed; }));
    CHECK(bed.service->engine().Get(id)->last_error == "pool: discarded (rebuilt)");
  }
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, 10s);
  REQUIRE(rebuilt.ok());
  REQUIRE(rebuilt->state == SnapshotState::kReady);
  REQUIRE(rebuilt->generation == snap.generation + 1);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 2; }));
  for (const auto& c : PoolOf(bed).clones) CHECK(c.generation == rebuilt->generation);
  // What a request takes now maps the new generation.
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  CHECK(vm->pooled);
  CHECK(vm->generation == rebuilt->generation);
}

TEST_CASE("pool: a deleted or unhealthy snapshot drains the pool and it stays empty") {
  TestBed bed([](ServiceOptions& o) {
    WithPool(1)(o);
    o.health.auto_rebuild = false;  // an automatic rebuild would make it `creating` (drained as `rebuilt`)
  });
  auto img = bed.AddImage("img");
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  SUBCASE("deleted") {
    REQUIRE(bed.service->snapshots().Delete(snap.id).ok());
    CHECK(Eventually([&] { return Discarded(bed, "deleted") == 1; }));
  }
  SUBCASE("unhealthy") {
    auto threshold = bed.options.health.unhealthy_threshold;
    for (int64_t i = 0; i < threshold; ++i) {
      REQUIRE(bed.service->health().RecordFailure(snap.id, snap.generation, "test").ok());
    }
    CHECK(Eventually([&] { return Discarded(bed, "unhealthy") == 1; }));
  }
  CHECK(PoolOf(bed).clones.empty());
  CHECK(Eventually([&] { return Pooled(bed).empty(); }));  // discarded clones are destroyed on the pool's thread
  std::this_thread::sleep_for(1200ms);  // a pass later: nothing was refilled
  CHECK(Pooled(bed).empty());
}

TEST_CASE("pool: a pooled clone whose VMM was killed is never handed out") {
  TestBed bed(WithPool(1));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  auto dead = PoolOf(bed).clones.front();
  REQUIRE(::kill(dead.pid, SIGKILL) == 0);
  REQUIRE(Eventually([&] { return Died(dead.pid); }));
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE_MESSAGE(vm.ok(), vm.status().ToString());
  CHECK(vm->instance_id != dead.vm_id);
  CHECK(vm->boot_method == BootMethod::kWarm);
  REQUIRE(bed.service->engine().Handle(vm->id).ok());
  CHECK((*bed.service->engine().Handle(vm->id))->IsAlive());
  CHECK(Eventually([&] { return Discarded(bed, "dead") == 1; }));
  CHECK(Eventually([&] { return bed.service->engine().Get(dead.vm_id)->state == VmState::kDestroyed; }));
  CHECK(bed.service->engine().Get(dead.vm_id)->last_error == "pool: discarded (dead)");
}

TEST_CASE("pool: clones idle past the limit are replaced") {
  TestBed bed(WithPool(1, 300ms));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  auto first = PoolOf(bed).clones.front().vm_id;
  CHECK(Eventually([&] { return Discarded(bed, "idle") >= 1; }));
  CHECK(Eventually([&] {
    auto p = PoolOf(bed);
    return p.clones.size() == 1 && p.clones.front().vm_id != first;
  }));
  CHECK(bed.service->engine().Get(first)->state == VmState::kDestroyed);
}

TEST_CASE("pool: size 0 keeps no pooled VM and every request restores") {
  TestBed bed(WithPool(0));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  std::this_thread::sleep_for(1500ms);
  CHECK(Pooled(bed).empty());
  CHECK(bed.vmm->restores == 0);
  auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
  REQUIRE(vm.ok());
  CHECK_FALSE(vm->pooled);
  CHECK(vm->timings.count("restore") == 1);
  auto p = bed.service->engine().Pool();
  REQUIRE(p.size() == 1);
  CHECK(p.front().target == 0);
  CHECK(p.front().clones.empty());
}

TEST_CASE("pool: options are validated, and CheckPool names an image that is not registered") {
  TempDir dir;
  auto vmms = std::make_shared<VmmRegistry>();
  vmms->Add(std::make_shared<FakeVmm>());
  auto open = [&](std::map<std::string, unsigned> pool) {
    auto o = ServiceOptions::UnderDirectory(dir.str());
    o.restore.pool = std::move(pool);
    return Service::Open(o, vmms);
  };
  auto bad_name = open({{"Bad Name!", 1}});
  REQUIRE_FALSE(bad_name.ok());
  CHECK(bad_name.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad_name.status().message().find("restore.pool") != std::string::npos);
  auto too_many = open({{"img", RestoreOptions::kMaxPoolSize + 1}});
  REQUIRE_FALSE(too_many.ok());
  CHECK(too_many.status().message().find("out of range") != std::string::npos);
  auto fine = open({{"nosuch", 1}});
  REQUIRE_MESSAGE(fine.ok(), fine.status().ToString());
  auto check = (*fine)->engine().CheckPool();
  CHECK(check.code() == StatusCode::kNotFound);
  CHECK(check.message().find("'nosuch'") != std::string::npos);
  REQUIRE(Eventually([&] { return !(*fine)->engine().Pool().front().last_error.empty(); }));
}

TEST_CASE("pool: a name registered after the engine started is picked up") {
  TestBed bed(WithPool(1));
  std::this_thread::sleep_for(200ms);
  CHECK(PoolOf(bed).runtime_image_id.empty());
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  CHECK(Eventually([&] { return PoolOf(bed).clones.size() == 1 && PoolOf(bed).runtime_image_id == img.id; }));
  CHECK(bed.service->engine().CheckPool().ok());
}

TEST_CASE("pool: shutdown destroys pooled clones, and a crash's are released at the next start") {
  TestBed bed(WithPool(1));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  auto id = PoolOf(bed).clones.front().vm_id;
  bed.service.reset();
  CHECK(bed.vmm->live == 0);
  bed.options.restore.pool.clear();
  bed.Reopen();
  CHECK(bed.service->engine().Get(id)->state == VmState::kDestroyed);
  CHECK(bed.service->snapshots().reconcile_report().released_pooled_vms == 0);

  // A crash leaves a `pooled` record with an address and a work directory behind.
  const std::string orphan = Id::Generate().str();
  auto dir = fs::path(bed.options.restore.vm_dir) / orphan;
  fs::create_directories(dir);
  auto st = detail::DbOf(bed.service->store()).With([&](SQLite::Database& db) -> Status {
    SQLite::Statement v(db,
                        "INSERT INTO vms(id, runtime_image_id, state, boot_method, work_dir, instance_id, created_at, "
                        "updated_at) VALUES (?, ?, 'pooled', 'warm', ?, ?, 1, 1)");
    v.bind(1, orphan);
    v.bind(2, img.id);
    v.bind(3, dir.string());
    v.bind(4, orphan);
    v.exec();
    SQLite::Statement a(db, "INSERT INTO address_allocations(idx, vm_id, mac, ip_cidr, allocated_at) VALUES (9, ?, 'm', 'i', 0)");
    a.bind(1, orphan);
    a.exec();
    return Status::Ok();
  });
  REQUIRE(st.ok());
  bed.Reopen();
  CHECK(bed.service->snapshots().reconcile_report().released_pooled_vms == 1);
  CHECK(bed.service->snapshots().reconcile_report().lost_vms == 0);
  auto rec = bed.service->engine().Get(orphan);
  REQUIRE(rec.ok());
  CHECK(rec->state == VmState::kDestroyed);
  CHECK_FALSE(fs::exists(dir));
  auto idx = detail::DbOf(bed.service->store()).With([&](SQLite::Database& db) -> Result<int64_t> {
    return detail::AddressIndexOf(db, orphan);
  });
  REQUIRE(idx.ok());
  CHECK(*idx == -1);
}

TEST_CASE("pool: a container takes a pooled clone and its record and its VM's agree") {
  TestBed bed(WithPool(1));
  auto img = bed.AddImage("img");
  bed.BuildSnapshot(img.id);
  REQUIRE(Eventually([&] { return PoolOf(bed).clones.size() == 1; }));
  auto clone = PoolOf(bed).clones.front().vm_id;
  ContainerRequest req;
  req.runtime_image = "img";
  auto c = bed.service->containers().Create(req);
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->state == ContainerState::kRunning);
  CHECK(c->boot_method == BootMethod::kWarm);
  CHECK(c->timings.count("pool_take") == 1);
  CHECK(c->timings.count("restore") == 0);
  auto vm = bed.service->engine().Get(c->id);
  REQUIRE(vm.ok());
  CHECK(vm->pooled);
  CHECK(vm->instance_id == clone);
  CHECK(c->vm_state == "running");
  CHECK(c->hostname == vm->hostname);
  CHECK(c->address == vm->address);
  REQUIRE(bed.service->containers().Destroy(c->id).ok());
  CHECK(bed.service->engine().Get(c->id)->state == VmState::kDestroyed);
}
