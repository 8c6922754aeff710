// The real container runtime end to end (label `docker`): Service + QemuVmm + guest agent + the Docker daemon
// inside VMs booted from the docker runtime image. Containers are created through ContainerManager, i.e. the
// agent's Docker API proxy; nothing here talks to Docker any other way, except the fault injection below, which
// kills dockerd inside a restored clone through the agent's `exec`.
#include <doctest/doctest.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "fcwarm/fcwarm.hpp"
#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::string DockerImageDir() {
  const char* e = std::getenv("FCWARM_DOCKER_IMAGE_DIR");
  return e && *e ? e : "/var/cache/fcwarm/guest/docker-current";
}

std::string SkipReason() {
  if (auto st = ProbeQemu(QemuOptions{}); !st.ok()) return "QEMU unusable: " + st.ToString();
  for (const char* f : {"bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4"}) {
    fs::path p = fs::path(DockerImageDir()) / f;
    if (!fs::exists(p)) return "docker runtime image file " + p.string() + " missing (build it with guest/build-docker-image.sh)";
  }
  return "";
}

bool Required() {
  const char* e = std::getenv("FCWARM_REQUIRE_DOCKER");
  return e && std::string(e) == "1";
}

bool ProcessGone(int pid) {
  if (pid <= 0) return true;
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty()) out.push_back(l);
  return out;
}

// The command of the issue: print the container's hostname and 16 random bytes.
const std::vector<std::string> kCommand = {"sh", "-c", "hostname; head -c 16 /dev/urandom | od -An -tx1"};

struct DockerBed {
  TempDir dir;
  std::shared_ptr<VmmRegistry> vmms = std::make_shared<VmmRegistry>();
  std::unique_ptr<Service> svc;
  RuntimeImage image;

  DockerBed() {
    vmms->Add(std::shared_ptr<Vmm>(MakeQemuVmm(QemuOptions{})));
    auto o = ServiceOptions::UnderDirectory(dir.str());
    // A restored clone's dockerd answers at once; a dead one should not hold the fallback up for long.
    o.restore.restore_runtime_timeout = 5s;
    o.health.auto_rebuild = false;
    auto s = Service::Open(o, vmms);
    REQUIRE_MESSAGE(s.ok(), s.status().ToString());
    svc = std::move(s).value();
    auto img = RuntimeImageFromArtifacts("docker", DockerImageDir());
    REQUIRE_MESSAGE(img.ok(), img.status().ToString());
    auto r = svc->images().Register(*img);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    image = *r;
  }
  ~DockerBed() { svc.reset(); }

  // Runs the command in a new container and checks it ran to exit 0 with two lines of output.
  ContainerRecord Run(const std::string& name, std::vector<std::string>* lines) {
    ContainerRequest req;
    req.runtime_image = image.name;
    req.name = name;
    req.image = "busybox:latest";
    req.command = kCommand;
    auto c = svc->containers().Create(req);
    REQUIRE_MESSAGE(c.ok(), c.status().ToString());
    CHECK(c->runtime == "docker");
    CHECK(c->docker_id.size() == 64);
    auto done = svc->containers().Wait(c->id, 120s);
    REQUIRE(done.ok());
    REQUIRE_MESSAGE(done->state == ContainerState::kExited, ToString(done->state), " ", done->last_error);
    REQUIRE(done->exit_code.has_value());
    CHECK(*done->exit_code == 0);
    auto logs = svc->containers().Logs(c->id);
    REQUIRE_MESSAGE(logs.ok(), logs.status().ToString());
    *lines = Lines(logs->stdout_data);
    REQUIRE_MESSAGE(lines->size() == 2, logs->stdout_data, " / stderr: ", logs->stderr_data);
    MESSAGE(name << ": " << (c->boot_method ? ToString(*c->boot_method) : "unknown") << " " << ToString(c->fallback_reason) << " total "
                 << c->timings["total"] << " ms; hostname " << (*lines)[0] << "; bytes" << (*lines)[1]);
    return *done;
  }
};

}  // namespace

TEST_CASE("docker runtime: warm containers are unique, a dead dockerd falls back to cold, no snapshot is cold") {
  std::string why = SkipReason();
  if (!why.empty()) {
    if (Required()) FAIL("FCWARM_REQUIRE_DOCKER=1 but: " << why);
    MESSAGE("SKIP: " << why);
    std::printf("SKIP: %s\n", why.c_str());
    return;
  }
  DockerBed bed;
  const int qemu_before = CountQemuProcesses(bed.dir.str());
  auto& cm = bed.svc->containers();

  // 1. The docker runtime snapshot: built once dockerd answers _ping (images loaded, container path warmed).
  auto s = bed.svc->snapshots().CreateSnapshot(bed.image.id);
  REQUIRE(s.ok());
  auto snap = bed.svc->snapshots().WaitWhileCreating(s->id, 600s);
  REQUIRE(snap.ok());
  REQUIRE_MESSAGE(snap->state == SnapshotState::kReady, snap->last_error);

  // 2. Three warm containers: distinct hostnames and random bytes, all warm.
  std::set<std::string> hostnames, randoms, vm_hostnames, addresses;
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    std::vector<std::string> lines;
    auto c = bed.Run("warm-" + std::to_string(i), &lines);
    CHECK(c.boot_method == BootMethod::kWarm);
    CHECK(c.fallback_reason == FallbackReason::kNone);
    CHECK(c.snapshot_id == snap->id);
    for (const char* step : {"restore", "identity", "runtime_verify", "container_create", "container_start", "total"}) {
      CHECK_MESSAGE(c.timings.count(step) == 1, step);
    }
    hostnames.insert(lines[0]);
    CHECK(lines[0] == c.hostname);  // host network mode: the container's hostname is its VM's
    randoms.insert(lines[1]);
    vm_hostnames.insert(c.hostname);
    addresses.insert(c.address);
    ids.push_back(c.id);
  }
  CHECK(hostnames.size() == 3);
  CHECK(randoms.size() == 3);
  CHECK(vm_hostnames.size() == 3);
  CHECK(addresses.size() == 3);
  for (const auto& id : ids) REQUIRE(cm.Destroy(id).ok());
  CHECK(CountQemuProcesses(bed.dir.str()) == qemu_before);

  // 3. dockerd killed inside the next restored clone before verification: that container falls back to cold,
  // the failure is counted against the snapshot, and the failed clone leaves nothing behind.
  int killed_clone_pid = -1;
  std::string killed_vm;
  bed.svc->engine().SetAfterRestoreHook([&](const std::string& vm_id, Vm& vm) {
    killed_vm = vm_id;
    killed_clone_pid = vm.pid();
    ExecRequest kill;
    kill.argv = {"sh", "-c", "kill -9 $(cat /var/run/docker.pid) && rm -f /var/run/docker.pid"};
    auto r = vm.guest().Exec(kill, 20s);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    REQUIRE_MESSAGE(r->exit_code == 0, r->stderr_data);
  });
  std::vector<std::string> lines;
  auto fallback = bed.Run("after-kill", &lines);
  bed.svc->engine().SetAfterRestoreHook({});
  CHECK(killed_vm == fallback.id);
  CHECK(fallback.boot_method == BootMethod::kCold);
  CHECK(fallback.fallback_reason == FallbackReason::kVerifyFailed);
  CHECK(fallback.timings.count("cold_boot") == 1);
  CHECK(ProcessGone(killed_clone_pid));
  auto after = bed.svc->snapshots().Get(snap->id);
  REQUIRE(after.ok());
  CHECK(after->failure_count == 1);
  CHECK(after->consecutive_failures == 1);
  CHECK(after->success_count == 3);
  CHECK(after->state == SnapshotState::kReady);
  CHECK(after->last_error.find("verify failed") != std::string::npos);
  auto boots = bed.svc->store().ListEvents({.kind = EventKind::kBoot, .limit = 1, .newest_first = true});
  REQUIRE(boots.ok());
  REQUIRE_FALSE(boots->empty());
  CHECK(boots->front().vm_id == fallback.id);
  CHECK(boots->front().reason == "verify_failed");
  // Exactly one VMM process per live VM: the failed clone's QEMU is gone, the cold VM's runs.
  CHECK(CountQemuProcesses(bed.dir.str()) == qemu_before + 1);
  REQUIRE(cm.Destroy(fallback.id).ok());
  CHECK(CountQemuProcesses(bed.dir.str()) == qemu_before);

  // 4. Snapshot deleted: the next container is cold (no_snapshot) and still runs.
  REQUIRE(bed.svc->snapshots().Delete(snap->id).ok());
  auto cold = bed.Run("no-snapshot", &lines);
  CHECK(cold.boot_method == BootMethod::kCold);
  CHECK(cold.fallback_reason == FallbackReason::kNoSnapshot);
  CHECK(hostnames.count(lines[0]) == 0);
  REQUIRE(cm.Destroy(cold.id).ok());

  // Nothing leaks: no VMM process, no VM directory, no address, no recorded process.
  CHECK(CountQemuProcesses(bed.dir.str()) == qemu_before);
  int vm_dirs = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(bed.dir.path() / "vms")) ++vm_dirs;
  CHECK(vm_dirs == 0);
  auto live = bed.svc->engine().List(false);
  REQUIRE(live.ok());
  CHECK(live->empty());
}
