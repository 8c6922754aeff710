// Snapshot builds that pre-pull container images (SnapshotManagerOptions::preload_images and
// RuntimeImage::preload_images) against the FakeVmm, whose fake Docker daemons pull from FakeVmm::pullable
// and hand their images on to clones of a snapshot. The real daemon and registry:
// tests/registry/test_preload.py.
#include <SQLiteCpp/SQLiteCpp.h>
#include <doctest/doctest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>

#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
namespace fs = std::filesystem;

namespace {

int64_t CountAddresses(TestBed& bed) {
  int64_t n = -1;
  auto st = detail::DbOf(bed.service->store()).Do([&](SQLite::Database& db) {
    n = db.execAndGet("SELECT COUNT(*) FROM address_allocations").getInt64();
  });
  REQUIRE(st.ok());
  return n;
}

// The build VM's id: the VM launched with hostname "fcwarm-build" (the fake records every launch's network).
std::vector<std::string> BuildVmIds(TestBed& bed) {
  std::vector<std::string> ids;
  for (const auto& [id, net] : bed.vmm->networks())
    if (net.hostname == "fcwarm-build") ids.push_back(id);
  return ids;
}

RuntimeImage DockerImage(TestBed& bed, const std::string& name, std::vector<std::string> preload) {
  RuntimeImage img;
  img.name = name;
  img.backend = "fake";
  img.kernel_path = WriteFile(bed.dir.path() / "images" / name / "vmlinux", "kernel of " + name);
  img.initrd_path = WriteFile(bed.dir.path() / "images" / name / "initrd", "initrd of " + name);
  img.shape.memory_mib = 128;
  img.runtime_check = {"docker", "/var/run/docker.sock", {}};
  img.preload_images = std::move(preload);
  return img;
}

ContainerRequest Req(const RuntimeImage& img, const std::string& image) {
  ContainerRequest r;
  r.runtime_image = img.name;
  r.image = image;
  r.command = {"sleep", "100"};
  return r;
}

}  // namespace

TEST_CASE(
    "preload: the build VM gets the clones' network, pulls, the snapshot lists it, a warm container does no "
    "pull") {
  TestBed bed([](ServiceOptions& o) {
    o.snapshots.preload_images = {"nginx:alpine"};
    o.restore.egress = "none";
    o.restore.dns = {"192.0.2.53"};
    o.restore.registry_mirrors = {"http://192.0.2.80:5000"};
    o.restore.insecure_registries = {"192.0.2.80:5000"};
  });
  auto img = bed.AddImage("dock", "docker");
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE_MESSAGE(snap.state == SnapshotState::kReady, snap.last_error);
  CHECK(bed.vmm->pulls == 1);
  // What the daemon had at snapshot time: the runtime image's own image and the preloaded one.
  CHECK(snap.images == std::vector<std::string>{"busybox:latest", "nginx:alpine"});
  auto manifest = util::ReadFile(fs::path(snap.generation_dir) / "manifest.json", 1 << 20);
  REQUIRE(manifest.ok());
  CHECK(boost::json::parse(*manifest).at("images") == boost::json::array{"busybox:latest", "nginx:alpine"});

  // The build VM had a network identity from the pool, with the egress rules, resolvers and registry settings
  // of every VM; its address is free again.
  auto builds = BuildVmIds(bed);
  REQUIRE(builds.size() == 1);
  auto net = bed.vmm->networks().at(builds[0]);
  CHECK(net.index >= 0);
  CHECK(net.ip_cidr.rfind("10.213.", 0) == 0);
  CHECK(net.egress == "none");
  CHECK(net.egress_allow == std::vector<std::string>{"192.0.2.80"});
  CHECK(net.dns == std::vector<std::string>{"192.0.2.53"});
  CHECK(net.egress_deny == std::vector<std::string>{"10.213.0.0/16"});
  CHECK(net.ports.empty());
  auto ids = bed.vmm->identity_requests();
  REQUIRE(ids.count(builds[0]) == 1);
  const auto& id = ids.at(builds[0]);
  CHECK(id.ip_cidr == net.ip_cidr);
  CHECK(id.mac == net.mac);
  CHECK(id.gateway == net.gateway);
  CHECK(id.dns == std::vector<std::string>{"192.0.2.53"});
  REQUIRE(id.docker.has_value());
  CHECK(id.docker->registry_mirrors == std::vector<std::string>{"http://192.0.2.80:5000"});
  CHECK(id.docker->insecure_registries == std::vector<std::string>{"192.0.2.80:5000"});
  CHECK(Eventually([&] { return CountAddresses(bed) == 0; }));
  // The build's event is written after its state is committed.
  REQUIRE(Eventually([&] {
    return bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 10})->size() == 1;
  }));
  auto events = bed.service->store().ListEvents({.kind = EventKind::kBuild, .limit = 10});
  REQUIRE(events.ok());
  CHECK(events->front().timings.count("preloading") == 1);

  // A warm container of the preloaded image: no pull at all.
  auto c = bed.service->containers().Create(Req(img, "nginx:alpine"));
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->state == ContainerState::kRunning);
  CHECK(c->boot_method == BootMethod::kWarm);
  CHECK(c->snapshot_id == snap.id);
  CHECK(bed.vmm->pulls == 1);
  CHECK_FALSE(c->pull.has_value());
  CHECK(c->timings.count("pull") == 0);
  // The clone has its own identity, not the build VM's.
  auto clone = bed.vmm->networks().at(c->id);
  CHECK(clone.index >= 0);
  CHECK(clone.hostname != "fcwarm-build");
  CHECK(bed.vmm->identity_requests().at(c->id).hostname == clone.hostname);
  // An image that was not preloaded is still pulled on demand.
  {
    std::lock_guard lock(bed.vmm->pull_mu);
    bed.vmm->pullable.insert("registry.local:5000/team/app:1.2");
  }
  auto other = bed.service->containers().Create(Req(img, "registry.local:5000/team/app:1.2"));
  REQUIRE_MESSAGE(other.ok(), other.status().ToString());
  CHECK(bed.vmm->pulls == 2);
  CHECK(other->pull.has_value());
}

TEST_CASE("preload: the service list and the image's own list combine, each image pulled once") {
  TestBed bed([](ServiceOptions& o) { o.snapshots.preload_images = {"nginx:alpine"}; });
  {
    std::lock_guard lock(bed.vmm->pull_mu);
    bed.vmm->pullable.insert("registry.local:5000/team/app:1.2");
  }
  // nginx:alpine twice (spelled two ways), busybox:latest already in the runtime image.
  auto reg = bed.service->images().Register(DockerImage(
      bed, "dock", {"docker.io/library/nginx:alpine", "registry.local:5000/team/app:1.2", "busybox"}));
  REQUIRE_MESSAGE(reg.ok(), reg.status().ToString());
  CHECK(reg->preload_images == std::vector<std::string>{"docker.io/library/nginx:alpine",
                                                        "registry.local:5000/team/app:1.2", "busybox"});
  auto stored = bed.service->images().Get(reg->id);
  REQUIRE(stored.ok());
  CHECK(stored->preload_images == reg->preload_images);
  auto snap = bed.BuildSnapshot(reg->id);
  REQUIRE_MESSAGE(snap.state == SnapshotState::kReady, snap.last_error);
  CHECK(bed.vmm->pulls == 2);
  CHECK(snap.images ==
        std::vector<std::string>{"busybox:latest", "nginx:alpine", "registry.local:5000/team/app:1.2"});
  // Both lists reach the warm containers.
  for (const char* ref : {"nginx:alpine", "registry.local:5000/team/app:1.2"}) {
    auto c = bed.service->containers().Create(Req(*reg, ref));
    REQUIRE_MESSAGE(c.ok(), c.status().ToString());
    CHECK(c->boot_method == BootMethod::kWarm);
    CHECK_FALSE(c->pull.has_value());
  }
  CHECK(bed.vmm->pulls == 2);
  // A rebuild pulls again into the new generation and lists the same.
  auto again = bed.service->snapshots().Rebuild(snap.id);
  REQUIRE(again.ok());
  auto rebuilt = bed.service->snapshots().WaitWhileCreating(snap.id, std::chrono::seconds(20));
  REQUIRE(rebuilt.ok());
  CHECK(rebuilt->generation == 2);
  CHECK(rebuilt->images == snap.images);
  CHECK(bed.vmm->pulls == 4);
}

TEST_CASE("preload: a pull that fails fails the build with Docker's message and leaves nothing behind") {
  TestBed bed([](ServiceOptions& o) {
    o.snapshots.preload_images = {"nginx:latest"};  // a valid reference the fake registry does not have
    o.health.auto_rebuild = false;
  });
  auto img = bed.AddImage("dock", "docker");
  auto snap = bed.BuildSnapshot(img.id);
  CHECK(snap.state == SnapshotState::kUnhealthy);
  CHECK_MESSAGE(
      snap.last_error.find("build failed in phase preloading: preload nginx:latest: docker pull: manifest "
                           "for nginx:latest not found") == 0,
      snap.last_error);
  CHECK(snap.images.empty());
  CHECK(snap.generation == 0);
  CHECK(Eventually([&] { return bed.vmm->live == 0; }));
  CHECK(Eventually([&] { return CountAddresses(bed) == 0; }));
  CHECK(Eventually([&] { return CountEntries(bed.options.snapshots.build_dir) == 0; }));
  CHECK(CountEntries(fs::path(bed.options.snapshots.root_dir) / img.id / snap.id) == 0);
  // A container of it boots cold and pulls on demand (and fails the same way).
  auto c = bed.service->containers().Create(Req(img, "nginx:latest"));
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("manifest for nginx:latest not found") != std::string::npos);
  CHECK(bed.vmm->live == 0);
}

TEST_CASE("preload: the daemon unreachable during the preload fails the build, its address released") {
  TestBed bed([](ServiceOptions& o) {
    o.snapshots.preload_images = {"nginx:alpine"};
    o.health.auto_rebuild = false;
  });
  auto img = bed.AddImage("dock", "docker");
  bed.vmm->script.fail_docker = 100;
  auto snap = bed.BuildSnapshot(img.id);
  bed.vmm->script.fail_docker = 0;
  CHECK(snap.state == SnapshotState::kUnhealthy);
  CHECK_MESSAGE(snap.last_error.find(
                    "build failed in phase preloading: preload nginx:alpine: docker image inspect: ") == 0,
                snap.last_error);
  CHECK(Eventually([&] { return CountAddresses(bed) == 0 && bed.vmm->live == 0; }));
}

TEST_CASE(
    "preload: bad references are refused naming the entry, at registration and when the service opens") {
  TestBed bed;
  auto refused = [&](std::vector<std::string> preload, const std::string& check_kind = "docker") {
    auto img = DockerImage(bed, "bad", std::move(preload));
    if (check_kind != "docker")
      img.runtime_check = {check_kind, check_kind == "file" ? "/run/ready" : "", {}};
    auto r = bed.service->images().Register(img);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    return r.status().message();
  };
  CHECK(refused({"nginx:alpine", "busybox", "Nginx:alpine"}).rfind("preload_images[2]: ", 0) == 0);
  CHECK(refused({"a/../b"}).rfind("preload_images[0]: ", 0) == 0);
  CHECK(refused({""}).rfind("preload_images[0]: ", 0) == 0);
  CHECK(refused({"busybox@sha256:abc"}).rfind("preload_images[0]: ", 0) == 0);
  CHECK(refused({std::string(10000, 'a')}).rfind("preload_images[0]: ", 0) == 0);
  CHECK(refused({"nginx:alpine", "docker.io/library/nginx:alpine"}) ==
        "preload_images[1]: 'docker.io/library/nginx:alpine' is listed twice");
  CHECK(refused(std::vector<std::string>(33, "busybox")) == "preload_images: more than 32 images");
  CHECK(refused({"nginx:alpine"}, "file").rfind("preload_images: only container runtime images", 0) == 0);
  CHECK(refused({"nginx:alpine"}, "none").rfind("preload_images: only container runtime images", 0) == 0);
  CHECK(bed.service->images().List()->empty());

  // The service-wide list is checked when the service opens; nothing else is wrong with these options.
  TempDir dir;
  auto open = [&](std::vector<std::string> preload) {
    auto o = ServiceOptions::UnderDirectory(dir.str());
    o.snapshots.preload_images = std::move(preload);
    return Service::Open(o, bed.vmms);
  };
  auto bad = open({"nginx:alpine", "UPPER:case"});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad.status().message().rfind("preload_images[1]: ", 0) == 0);
  auto twice = open({"busybox", "busybox:latest"});
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.status().message() == "preload_images[1]: 'busybox:latest' is listed twice");
  CHECK(open({"nginx:alpine", "registry.local:5000/team/app:1.2"}).ok());
}

TEST_CASE("preload: builds without preloads get no network identity, VM-only images list no images") {
  TestBed bed([](ServiceOptions& o) { o.restore.dns = {"192.0.2.53"}; });
  auto dock = bed.AddImage("dock", "docker");
  auto snap = bed.BuildSnapshot(dock.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  CHECK(snap.images == std::vector<std::string>{"busybox:latest"});
  CHECK(bed.vmm->pulls == 0);
  auto builds = BuildVmIds(bed);
  REQUIRE(builds.size() == 1);
  CHECK(bed.vmm->networks().at(builds[0]).index < 0);
  CHECK(bed.vmm->identity_requests().count(builds[0]) == 0);

  // The service list is for container runtime images only: a VM-only image's build ignores it.
  TestBed vm_bed([](ServiceOptions& o) { o.snapshots.preload_images = {"nginx:alpine"}; });
  auto plain = vm_bed.AddImage("plain", "file");
  auto vm_snap = vm_bed.BuildSnapshot(plain.id);
  REQUIRE_MESSAGE(vm_snap.state == SnapshotState::kReady, vm_snap.last_error);
  CHECK(vm_snap.images.empty());
  CHECK(vm_bed.vmm->docker_requests == 0);
  REQUIRE(BuildVmIds(vm_bed).size() == 1);
  CHECK(vm_bed.vmm->networks().at(BuildVmIds(vm_bed)[0]).index < 0);
}

TEST_CASE("preload: without network allocation a build that must pull fails before booting") {
  TestBed bed([](ServiceOptions& o) {
    o.restore.allocate_network = false;
    o.snapshots.preload_images = {"nginx:alpine"};
    o.health.auto_rebuild = false;
  });
  auto img = bed.AddImage("dock", "docker");
  auto snap = bed.BuildSnapshot(img.id);
  CHECK(snap.state == SnapshotState::kUnhealthy);
  CHECK(snap.last_error ==
        "build failed in phase queued: preload_images: build VMs get no network (allocate_network is off), "
        "so they "
        "cannot pull");
  CHECK(bed.vmm->cold_boots == 0);
}

TEST_CASE("preload: addresses held by builds of a crashed run are released at startup, VMs' are not") {
  TestBed bed;
  auto st = detail::DbOf(bed.service->store()).Do([&](SQLite::Database& db) {
    db.exec(
        "INSERT INTO address_allocations(idx, vm_id, mac, ip_cidr, allocated_at) VALUES "
        "(0, 'build:0b7e1f5c-0000-4000-8000-000000000001', '02:fc:00:00:00:00', '10.213.0.2/30', 1), "
        "(1, 'buildish-vm', '02:fc:00:00:00:01', '10.213.0.6/30', 1)");
  });
  REQUIRE(st.ok());
  bed.Reopen();
  std::vector<std::string> holders;
  st = detail::DbOf(bed.service->store()).Do([&](SQLite::Database& db) {
    SQLite::Statement q(db, "SELECT vm_id FROM address_allocations ORDER BY idx");
    while (q.executeStep()) holders.push_back(q.getColumn("vm_id").getString());
  });
  REQUIRE(st.ok());
  CHECK(holders == std::vector<std::string>{"buildish-vm"});
}

TEST_CASE("preload: a store of schema 3 migrates, its images and snapshots read with empty lists") {
  TempDir dir;
  const std::string path = (dir.path() / "old.db").string();
  {
    SQLite::Database db(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)");
    for (const auto& m : detail::Migrations()) {
      if (m.version > 3) break;
      db.exec(m.sql);
      db.exec("INSERT INTO schema_migrations VALUES (" + std::to_string(m.version) + ", 1)");
    }
    db.exec(
        "INSERT INTO runtime_images(id, name, backend, kernel_path, vcpus, memory_mib, created_at) VALUES "
        "('0b7e1f5c-0000-4000-8000-000000000001', 'old', 'fake', '/k', 1, 128, 1)");
    db.exec(
        "INSERT INTO runtime_snapshots(id, runtime_image_id, state, phase, created_at, updated_at) VALUES "
        "('0b7e1f5c-0000-4000-8000-000000000002', '0b7e1f5c-0000-4000-8000-000000000001', 'ready', 'done', "
        "1, 1)");
  }
  auto store = Store::Open({path});
  REQUIRE_MESSAGE(store.ok(), store.status().ToString());
  CHECK((*store)->SchemaVersion() == Store::kSchemaVersion);
  auto vmms = std::make_shared<VmmRegistry>();
  vmms->Add(std::make_shared<FakeVmm>());
  ImageRegistry images(**store, *vmms);
  auto img = images.Get("0b7e1f5c-0000-4000-8000-000000000001");
  REQUIRE(img.ok());
  CHECK(img->preload_images.empty());
  auto snap = detail::DbOf(**store).With(
      [&](SQLite::Database& db) { return detail::SnapshotById(db, "0b7e1f5c-0000-4000-8000-000000000002"); });
  REQUIRE(snap.ok());
  CHECK(snap->images.empty());
}
