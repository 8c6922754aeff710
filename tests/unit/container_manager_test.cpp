// ContainerManager against the FakeVmm and its scripted Docker daemon (tests/support/fake_vmm.cpp). The real
// Docker daemon inside a real VM is exercised by tests/docker (label `docker`).
#include <doctest/doctest.h>

#include <cmath>
#include <mutex>
#include <set>
#include <thread>

#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;

namespace {
ContainerRequest Req(const RuntimeImage& img, std::vector<std::string> cmd) {
  ContainerRequest r;
  r.runtime_image = img.name;
  r.image = "busybox:latest";
  r.command = std::move(cmd);
  return r;
}
}  // namespace

TEST_CASE("docker runtime: warm container runs, exits, logs demultiplexed, timings per step") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  auto req = Req(img, {"echo", "hello"});
  req.env = {{"A", "1"}};
  req.name = "web";
  auto c = bed.service->containers().Create(req);
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->runtime == "docker");
  CHECK(c->name == "web");
  CHECK(c->boot_method == BootMethod::kWarm);
  CHECK(c->fallback_reason == FallbackReason::kNone);
  CHECK(c->snapshot_id == snap.id);
  CHECK(c->docker_id.size() == 64);
  CHECK(c->vm_state == "running");
  for (const char* step : {"restore", "identity", "runtime_verify", "provision", "container_create", "container_start", "total"}) {
    CHECK_MESSAGE(c->timings.count(step) == 1, step);
  }
  CHECK(c->timings.at("total") >= c->timings.at("provision"));
  CHECK(c->started_at.has_value());
  // The fake container exits right away: Get() refreshes from the daemon.
  auto w = bed.service->containers().Wait(c->id, std::chrono::seconds(5));
  REQUIRE(w.ok());
  CHECK(w->state == ContainerState::kExited);
  REQUIRE(w->exit_code.has_value());
  CHECK(*w->exit_code == 0);
  CHECK(w->finished_at.has_value());
  auto logs = bed.service->containers().Logs(c->id);
  REQUIRE_MESSAGE(logs.ok(), logs.status().ToString());
  CHECK(logs->stdout_data == "echo hello\n");
  CHECK(logs->stderr_data == "done\n");
  // Logs survive the VM: captured when the exit was observed.
  REQUIRE(bed.service->containers().Destroy(c->id).ok());
  auto gone = bed.service->containers().Get(c->id);
  REQUIRE(gone.ok());
  CHECK(gone->state == ContainerState::kDestroyed);
  CHECK(gone->vm_state == "destroyed");
  auto kept = bed.service->containers().Logs(c->id);
  REQUIRE(kept.ok());
  CHECK(kept->stdout_data == "echo hello\n");
}

TEST_CASE("docker runtime: exit codes, long-running containers, stop") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto failing = bed.service->containers().Create(Req(img, {"exit", "3"}));
  REQUIRE(failing.ok());
  CHECK(failing->boot_method == BootMethod::kCold);
  CHECK(failing->fallback_reason == FallbackReason::kNoSnapshot);
  auto w = bed.service->containers().Wait(failing->id, std::chrono::seconds(5));
  REQUIRE(w.ok());
  CHECK(w->state == ContainerState::kExited);
  CHECK(w->exit_code == 3);
  // Its output was kept when the exit was seen: stopping its VM asks the daemon nothing more.
  const int requests = bed.vmm->docker_requests;
  auto stopped_exited = bed.service->containers().Stop(failing->id);
  REQUIRE(stopped_exited.ok());
  CHECK(stopped_exited->state == ContainerState::kExited);
  CHECK(bed.vmm->docker_requests == requests);
  auto kept = bed.service->containers().Logs(failing->id);
  REQUIRE(kept.ok());
  CHECK(kept->stdout_data == "exit 3\n");

  auto sleeper = bed.service->containers().Create(Req(img, {"sleep", "1000"}));
  REQUIRE(sleeper.ok());
  auto still = bed.service->containers().Wait(sleeper->id, std::chrono::milliseconds(200));
  REQUIRE(still.ok());
  CHECK(still->state == ContainerState::kRunning);
  CHECK_FALSE(still->exit_code.has_value());
  auto stopped = bed.service->containers().Stop(sleeper->id);
  REQUIRE(stopped.ok());
  CHECK(stopped->state == ContainerState::kStopped);
  CHECK(stopped->vm_state == "stopped");
  // Logs were captured before the VM stopped.
  auto logs = bed.service->containers().Logs(sleeper->id);
  REQUIRE(logs.ok());
  CHECK(logs->stdout_data == "sleep 1000\n");
  auto list = bed.service->containers().List(false);
  REQUIRE(list.ok());
  CHECK(list->size() == 2);
  CHECK(list->front().id == sleeper->id);  // newest first
}

TEST_CASE("docker runtime: an image the daemon lacks is pulled, its pull recorded, then it runs") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto req = Req(img, {"sleep", "100"});
  req.image = "nginx:alpine";
  auto c = bed.service->containers().Create(req);
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->state == ContainerState::kRunning);
  CHECK(bed.vmm->pulls == 1);
  REQUIRE(c->pull.has_value());
  CHECK(c->pull->layers == 2);
  CHECK(c->pull->bytes == 3345);
  CHECK(c->pull->layers_total == 2);
  CHECK(c->pull->bytes_total == 3345);
  CHECK(c->pull->done);
  CHECK(c->timings.count("pull") == 1);
  CHECK(std::abs(c->pull->ms - c->timings.at("pull")) <= 1.0);  // stored in whole ms
  // An image the daemon has is not pulled again, and such a container shows no pull.
  auto again = bed.service->containers().Create(Req(img, {"sleep", "100"}));
  REQUIRE(again.ok());
  CHECK(bed.vmm->pulls == 1);
  CHECK_FALSE(again->pull.has_value());
  CHECK(again->timings.count("pull") == 0);
}

TEST_CASE("docker runtime: the record shows a pull's progress while it runs") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  std::vector<ContainerRecord> seen;  // the record after each streamed line, as a poller would read it
  {
    std::lock_guard lock(bed.vmm->pull_mu);
    bed.vmm->on_stream_line = [&](size_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past the record's update interval
      auto list = bed.service->containers().List(true);
      if (list.ok() && !list->empty()) seen.push_back(list->front());
    };
  }
  auto req = Req(img, {"sleep", "100"});
  req.image = "nginx:alpine";
  auto c = bed.service->containers().Create(req);
  {
    std::lock_guard lock(bed.vmm->pull_mu);
    bed.vmm->on_stream_line = nullptr;
  }
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  // The fake's stream: per layer (aaa 1000 bytes, bbb 2345) "Pulling fs layer", "Downloading" half, "Pull
  // complete"; then the final status. seen[i] is the record after line i + 1:
  REQUIRE(seen.size() >= 5);
  for (size_t i = 0; i < 6 && i < seen.size(); ++i) CHECK(seen[i].state == ContainerState::kPulling);
  REQUIRE(seen[1].pull.has_value());
  CHECK(seen[1].pull->layers == 0);
  CHECK(seen[1].pull->layers_total == 1);
  CHECK(seen[1].pull->bytes == 500);
  CHECK(seen[1].pull->bytes_total == 1000);
  CHECK_FALSE(seen[1].pull->done);
  REQUIRE(seen[4].pull.has_value());
  CHECK(seen[4].pull->layers == 1);
  CHECK(seen[4].pull->layers_total == 2);
  CHECK(seen[4].pull->bytes == 1000 + 1172);
  CHECK(seen[4].pull->bytes_total == 3345);
  CHECK_FALSE(seen[4].pull->done);
  CHECK(seen[4].pull->ms >= seen[1].pull->ms);
  REQUIRE(c->pull.has_value());
  CHECK(c->pull->done);
  CHECK(c->pull->bytes == 3345);
}

TEST_CASE("docker runtime: a failed pull fails the container with Docker's message and releases its VM") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto req = Req(img, {"true"});
  req.image = "nginx:latest";
  auto c = bed.service->containers().Create(req);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kUnavailable);
  CHECK_MESSAGE(c.status().message().find("pull nginx:latest: docker pull: manifest for nginx:latest not found") !=
                    std::string::npos,
                c.status().message());
  auto list = bed.service->containers().List(true);
  REQUIRE(list.ok());
  REQUIRE(list->size() == 1);
  const auto& rec = list->front();
  CHECK(rec.state == ContainerState::kFailed);
  CHECK(rec.last_error.find("manifest unknown") != std::string::npos);
  CHECK(rec.vm_state == "destroyed");
  // The pull started: its last progress stays, not done.
  REQUIRE(rec.pull.has_value());
  CHECK_FALSE(rec.pull->done);
  CHECK(rec.pull->layers == 0);
  CHECK(rec.timings.count("pull") == 1);
  CHECK(rec.timings.count("container_create") == 0);
  CHECK(bed.vmm->live == 0);
  auto logs = bed.service->containers().Logs(rec.id);
  CHECK(logs.status().code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("docker runtime: the daemon unreachable at create time fails the container, nothing leaks") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  bed.vmm->script.fail_docker = 1;
  auto c = bed.service->containers().Create(Req(img, {"true"}));
  REQUIRE_FALSE(c.ok());
  CHECK_MESSAGE(c.status().message().find("docker image inspect") != std::string::npos, c.status().message());
  CHECK(bed.vmm->live == 0);
  auto vms = bed.service->engine().List(false);
  REQUIRE(vms.ok());
  CHECK(vms->empty());
}

TEST_CASE("vm runtime: no command = the VM is the container, a command runs through exec") {
  TestBed bed;
  auto img = bed.AddImage("plain", "file");
  ContainerRequest r;
  r.runtime_image = img.id;
  auto vm_only = bed.service->containers().Create(r);
  REQUIRE_MESSAGE(vm_only.ok(), vm_only.status().ToString());
  CHECK(vm_only->runtime == "vm");
  CHECK(vm_only->state == ContainerState::kRunning);
  CHECK(bed.service->containers().Logs(vm_only->id).status().code() == StatusCode::kFailedPrecondition);

  r.command = {"echo", "hi"};
  r.env = {{"X", "y"}};
  auto cmd = bed.service->containers().Create(r);
  REQUIRE(cmd.ok());
  CHECK(cmd->state == ContainerState::kExited);
  CHECK(cmd->exit_code == 0);
  CHECK(cmd->timings.count("exec") == 1);
  auto logs = bed.service->containers().Logs(cmd->id);
  REQUIRE(logs.ok());
  CHECK(logs->stdout_data == "env X=y echo hi ");  // the fake agent echoes its argv
}

TEST_CASE("validation names the bad field and records nothing") {
  TestBed bed;
  auto dock = bed.AddImage("dock", "docker");
  auto plain = bed.AddImage("plain");
  auto& cm = bed.service->containers();
  auto expect = [&](ContainerRequest r, StatusCode code, const std::string& needle) {
    auto c = cm.Create(r);
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == code);
    CHECK_MESSAGE(c.status().message().find(needle) != std::string::npos, c.status().message());
  };
  expect(ContainerRequest{}, StatusCode::kInvalidArgument, "image: is required");  // runtime: the one "dock"
  expect({.runtime_image = "../etc"}, StatusCode::kInvalidArgument, "runtime_image");
  expect({.runtime_image = "nope"}, StatusCode::kNotFound, "nope");
  expect({.runtime_image = "dock"}, StatusCode::kInvalidArgument, "image: is required");
  expect({.runtime_image = "dock", .image = "-rf"}, StatusCode::kInvalidArgument, "image: '-rf'");
  expect({.runtime_image = "dock", .image = "a b"}, StatusCode::kInvalidArgument, "image: 'a b'");
  expect({.runtime_image = "dock", .image = "../../x"}, StatusCode::kInvalidArgument, "image: '../../x'");
  expect({.runtime_image = "dock", .image = "Nginx"}, StatusCode::kInvalidArgument, "lower case");
  expect({.runtime_image = "plain", .image = "busybox"}, StatusCode::kInvalidArgument, "no container runtime");
  expect({.runtime_image = "dock", .id = "not-a-uuid", .image = "busybox"}, StatusCode::kInvalidArgument, "id");
  expect({.runtime_image = "dock", .name = "Bad Name", .image = "busybox"}, StatusCode::kInvalidArgument, "name");
  expect({.runtime_image = "dock", .image = "busybox", .command = {std::string("a\0b", 3)}},
         StatusCode::kInvalidArgument, "command[0]");
  expect({.runtime_image = "dock", .image = "busybox", .env = {{"1X", "v"}}}, StatusCode::kInvalidArgument, "env");
  expect({.runtime_image = "dock", .image = "busybox", .command = {std::string(40000, 'x')}},
         StatusCode::kInvalidArgument, "command/env");
  expect({.runtime_image = "dock", .image = "busybox", .wait_for_creating = std::chrono::milliseconds(-1)},
         StatusCode::kInvalidArgument, "wait_for_creating");
  auto list = cm.List(true);
  REQUIRE(list.ok());
  CHECK(list->empty());
  CHECK(cm.Get("not-a-uuid").status().code() == StatusCode::kInvalidArgument);
  CHECK(cm.Get(Id::Generate().str()).status().code() == StatusCode::kNotFound);
  (void)dock;
  (void)plain;
}

TEST_CASE("the runtime image defaults to the one container runtime image, or to the configured one") {
  TestBed none;
  none.AddImage("plain");  // a VM-only image is never a default
  auto r = none.service->containers().Create({.image = "busybox"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK_MESSAGE(r.status().message().find("runtime_image: none named and no container runtime image") == 0,
                r.status().message());

  TestBed bed;
  auto dock = bed.AddImage("dock", "docker");
  bed.AddImage("plain");
  auto one = bed.service->containers().Create({.image = "busybox:latest", .command = {"true"}});
  REQUIRE_MESSAGE(one.ok(), one.status().ToString());
  CHECK(one->runtime_image_id == dock.id);
  CHECK(one->image == "busybox:latest");
  bed.AddImage("dock2", "docker");
  auto two = bed.service->containers().Create({.image = "busybox"});
  REQUIRE_FALSE(two.ok());
  CHECK_MESSAGE(two.status().message().find("2 container runtime images are registered (dock, dock2)") !=
                    std::string::npos,
                two.status().message());
  CHECK(two.status().message().find("--default-runtime-image") != std::string::npos);
  auto named = bed.service->containers().Create({.runtime_image = "plain"});  // VM-only: by name
  REQUIRE(named.ok());
  CHECK(named->runtime == "vm");

  TestBed configured([](ServiceOptions& o) { o.containers.default_runtime_image = "dock2"; });
  configured.AddImage("dock", "docker");
  auto d2 = configured.AddImage("dock2", "docker");
  auto c = configured.service->containers().Create({.image = "busybox", .command = {"true"}});
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->runtime_image_id == d2.id);
}

TEST_CASE("prepare/start: ids, double start, abandon, provisioning guards") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto& cm = bed.service->containers();
  std::string id = Id::Generate().str();
  auto req = Req(img, {"true"});
  req.id = id;
  auto p = cm.Prepare(req);
  REQUIRE(p.ok());
  CHECK(p->id == id);
  CHECK(p->state == ContainerState::kProvisioning);
  CHECK(cm.Provisioning() == 1);
  CHECK(cm.Prepare(req).status().code() == StatusCode::kAlreadyExists);
  CHECK(cm.Stop(id).status().code() == StatusCode::kFailedPrecondition);
  CHECK(cm.Destroy(id).code() == StatusCode::kFailedPrecondition);
  auto s = cm.Start(id);
  REQUIRE(s.ok());
  CHECK(cm.Provisioning() == 0);
  CHECK(s->id == id);
  CHECK(cm.Start(id).status().code() == StatusCode::kFailedPrecondition);
  CHECK(cm.Abandon(id, "x").code() == StatusCode::kFailedPrecondition);

  req.id = "";
  auto q = cm.Prepare(req);
  REQUIRE(q.ok());
  REQUIRE(cm.Abandon(q->id, "queue full").ok());
  auto a = cm.Get(q->id);
  REQUIRE(a.ok());
  CHECK(a->state == ContainerState::kFailed);
  CHECK(a->last_error == "queue full");
  CHECK(cm.Start(q->id).status().code() == StatusCode::kFailedPrecondition);
  CHECK(cm.Provisioning() == 0);
  CHECK(cm.Destroy(q->id).ok());
}

TEST_CASE("restart: running containers become lost, unstarted ones failed, records survive") {
  TempDir keep;
  std::string db = (keep.path() / "fcwarm.db").string();
  TestBed bed({}, db);
  auto img = bed.AddImage("dock", "docker");
  auto running = bed.service->containers().Create(Req(img, {"sleep", "1"}));
  REQUIRE(running.ok());
  auto prepared = bed.service->containers().Prepare(Req(img, {"true"}));
  REQUIRE(prepared.ok());
  bed.Reopen();
  auto r = bed.service->containers().Get(running->id);
  REQUIRE(r.ok());
  CHECK(r->state == ContainerState::kLost);
  CHECK(r->docker_id == running->docker_id);
  auto p = bed.service->containers().Get(prepared->id);
  REQUIRE(p.ok());
  CHECK(p->state == ContainerState::kFailed);
  CHECK(p->last_error.find("interrupted") != std::string::npos);
}

TEST_CASE("many concurrent containers get distinct ids, VMs and addresses") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  bed.BuildSnapshot(img.id);
  std::vector<std::thread> threads;
  std::mutex mu;
  std::set<std::string> ids, addrs;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      auto c = bed.service->containers().Create(Req(img, {"sleep", "5"}));
      REQUIRE(c.ok());
      std::lock_guard lock(mu);
      ids.insert(c->id);
      addrs.insert(c->address);
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ids.size() == 6);
  CHECK(addrs.size() == 6);
  for (const auto& id : ids) CHECK(bed.service->containers().Destroy(id).ok());
  CHECK(bed.vmm->live == 0);
}

TEST_CASE("CreateAsync: starts in the background, bounded queue, queued starts fail at shutdown") {
  TempDir keep;
  std::string db = (keep.path() / "fcwarm.db").string();
  TestBed bed(
      [](ServiceOptions& o) {
        o.containers.start_workers = 1;
        o.containers.start_queue = 1;
      },
      db);
  auto img = bed.AddImage("dock", "docker");
  bed.vmm->script.build_delay_ms = 1500;  // no snapshot: every container cold-boots, slowly
  auto& cm = bed.service->containers();

  auto a = cm.CreateAsync(Req(img, {"true"}));
  REQUIRE_MESSAGE(a.ok(), a.status().ToString());
  CHECK(a->state == ContainerState::kProvisioning);
  CHECK(a->runtime_image_id == img.id);
  // The one worker took it once its VM exists (the VM record is written before the slow boot).
  auto has_vm = [&](const std::string& id) {
    auto r = cm.Get(id);
    return r.ok() && r->vm_id().has_value();
  };
  REQUIRE(Eventually([&] { return has_vm(a->id); }));
  auto b = cm.CreateAsync(Req(img, {"true"}));  // waits in the queue
  REQUIRE(b.ok());
  auto c = cm.CreateAsync(Req(img, {"true"}));  // beyond the queue
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kResourceExhausted);
  CHECK_MESSAGE(c.status().message().find("too many containers") != std::string::npos, c.status().message());
  auto list = cm.List(false);
  REQUIRE(list.ok());
  REQUIRE(list->size() == 3);  // the refused one is recorded as failed, not lost
  for (const auto& r : *list) {
    if (r.id != a->id && r.id != b->id) {
      CHECK(r.state == ContainerState::kFailed);
      CHECK(r.last_error.find("too many containers") != std::string::npos);
    }
  }
  CHECK(cm.Provisioning() == 2);

  auto done = cm.Wait(b->id, std::chrono::seconds(20));
  REQUIRE(done.ok());
  CHECK(done->state == ContainerState::kExited);
  CHECK(done->boot_method == BootMethod::kCold);
  auto first = cm.Get(a->id);
  REQUIRE(first.ok());
  CHECK(first->state == ContainerState::kExited);
  CHECK(cm.Provisioning() == 0);

  // Shutdown: the running start finishes, the queued one fails with a reason that says so.
  auto d = cm.CreateAsync(Req(img, {"true"}));
  REQUIRE(d.ok());
  REQUIRE(Eventually([&] { return has_vm(d->id); }));
  auto e = cm.CreateAsync(Req(img, {"true"}));
  REQUIRE(e.ok());
  bed.Reopen();
  auto queued = bed.service->containers().Get(e->id);
  REQUIRE(queued.ok());
  CHECK(queued->state == ContainerState::kFailed);
  CHECK_MESSAGE(queued->last_error.find("shut down before provisioning started") != std::string::npos,
                queued->last_error);
  auto ran = bed.service->containers().Get(d->id);
  REQUIRE(ran.ok());
  // Its start finished before the manager went away (the container ran; the restart then lost its VM).
  CHECK(ran->state == ContainerState::kLost);
  CHECK_FALSE(ran->docker_id.empty());
}

TEST_CASE("published ports: resolved and reserved before any VM starts, given to the VM, freed with it") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto& cm = bed.service->containers();
  // Two free host ports of this machine, found the way the manager looks (a trial bind).
  auto probe = Req(img, {"sleep", "100"});
  probe.ports = {"80", "127.0.0.1::53/udp"};
  auto a = cm.Create(probe);
  REQUIRE_MESSAGE(a.ok(), a.status().ToString());
  REQUIRE(a->ports.size() == 2);
  CHECK(a->ports[0].rfind("127.0.0.1:", 0) == 0);
  CHECK(a->ports[0].size() > std::string("127.0.0.1::80/tcp").size());
  CHECK(a->ports[0].substr(a->ports[0].size() - 7) == ":80/tcp");
  CHECK(a->ports[1].substr(a->ports[1].size() - 7) == ":53/udp");
  auto nets = bed.vmm->networks();
  REQUIRE(nets.count(a->id) == 1);
  CHECK(nets.at(a->id).ports == a->ports);

  // The same host port again: refused before anything starts (no VM, no record left provisioning).
  const int boots = bed.vmm->cold_boots + bed.vmm->restores;
  std::string taken = a->ports[0].substr(0, a->ports[0].rfind(':'));  // "127.0.0.1:PORT"
  auto dup = Req(img, {"sleep", "100"});
  dup.ports = {taken + ":8080"};
  auto refused = cm.Create(dup);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kFailedPrecondition);
  CHECK_MESSAGE(refused.status().message().find(taken.substr(10)) != std::string::npos, refused.status().message());
  CHECK(bed.vmm->cold_boots + bed.vmm->restores == boots);
  auto all = cm.List(true);
  REQUIRE(all.ok());
  CHECK(all->size() == 1);

  // Bad specs name the entry.
  for (const char* bad : {"0:80", "70000:80", "8080:0", "8080:80/sctp", "1.2.3.4.5:8080:80", "abc"}) {
    auto r = Req(img, {"true"});
    r.ports = {bad};
    auto st = cm.Prepare(r);
    REQUIRE_FALSE(st.ok());
    CHECK_MESSAGE(st.status().code() == StatusCode::kInvalidArgument, bad);
    CHECK_MESSAGE(st.status().message().find("ports[0]") != std::string::npos, st.status().message());
  }
  auto twice = Req(img, {"true"});
  twice.ports = {"18080:80", "18080:81"};
  auto tw = cm.Prepare(twice);
  REQUIRE_FALSE(tw.ok());
  CHECK(tw.status().code() == StatusCode::kInvalidArgument);
  CHECK(tw.status().message().find("ports[1]") != std::string::npos);

  // Once the container is destroyed its port is free again.
  REQUIRE(cm.Destroy(a->id).ok());
  auto reuse = cm.Create(dup);
  REQUIRE_MESSAGE(reuse.ok(), reuse.status().ToString());
  CHECK(reuse->ports == std::vector<std::string>{taken + ":8080/tcp"});
  REQUIRE(cm.Destroy(reuse->id).ok());
}

TEST_CASE("a guest that breaks the agent protocol: its container fails naming it, its VM fails and stops") {
  TestBed bed;
  auto plain = bed.AddImage("plain", "file");
  ContainerRequest r;
  r.runtime_image = plain.id;
  r.command = {"echo", "hi"};
  bed.vmm->script.violate_exec = 1;
  auto bad = bed.service->containers().Create(r);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kDataLoss);
  CHECK_MESSAGE(bad.status().message().find("protocol violation: reply line longer than") != std::string::npos,
                bad.status().message());
  auto list = bed.service->containers().List(false);
  REQUIRE(list.ok());
  REQUIRE(list->size() == 1);
  const auto failed = list->front();
  CHECK(failed.state == ContainerState::kFailed);
  CHECK(failed.last_error.find("command: guest agent exec: protocol violation") == 0);
  CHECK(failed.vm_state == "failed");
  auto vm = bed.service->engine().Get(failed.id);
  REQUIRE(vm.ok());
  CHECK(vm->state == VmState::kFailed);
  CHECK(vm->last_error == failed.last_error);
  CHECK(bed.vmm->live == 0);  // the VMM was stopped
  CHECK(bed.service->engine().Handle(failed.id).status().code() == StatusCode::kNotFound);

  // Everyone else is served as before.
  auto good = bed.service->containers().Create(r);
  REQUIRE_MESSAGE(good.ok(), good.status().ToString());
  CHECK(good->state == ContainerState::kExited);
  CHECK(good->exit_code == 0);

  // Destroying the container keeps the reason its VM failed.
  REQUIRE(bed.service->containers().Destroy(failed.id).ok());
  vm = bed.service->engine().Get(failed.id);
  REQUIRE(vm.ok());
  CHECK(vm->state == VmState::kDestroyed);
  CHECK(vm->last_error == failed.last_error);
  // Failing it again changes nothing.
  CHECK(bed.service->engine().Fail(failed.id, "again").ok());
  CHECK(bed.service->engine().Get(failed.id)->last_error == failed.last_error);
}

TEST_CASE("a running container whose guest breaks the protocol later fails, its VM with it") {
  TestBed bed;
  auto img = bed.AddImage("dock", "docker");
  auto a = bed.service->containers().Create(Req(img, {"sleep", "1000"}));
  auto b = bed.service->containers().Create(Req(img, {"sleep", "1000"}));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(bed.vmm->live == 2);
  bed.vmm->script.violate_docker = 1;  // the next request: a's inspect
  auto seen = bed.service->containers().Get(a->id);
  REQUIRE(seen.ok());
  CHECK(seen->state == ContainerState::kFailed);
  CHECK_MESSAGE(seen->last_error.find("protocol violation") != std::string::npos, seen->last_error);
  auto again = bed.service->containers().Get(a->id);
  REQUIRE(again.ok());
  CHECK(again->state == ContainerState::kFailed);
  CHECK(again->vm_state == "failed");
  CHECK(bed.vmm->live == 1);
  auto other = bed.service->containers().Get(b->id);
  REQUIRE(other.ok());
  CHECK(other->state == ContainerState::kRunning);
  // Stop and destroy of the failed one work and ask its guest nothing.
  const int requests = bed.vmm->docker_requests;
  auto stopped = bed.service->containers().Stop(a->id);
  REQUIRE_MESSAGE(stopped.ok(), stopped.status().ToString());
  CHECK(stopped->state == ContainerState::kFailed);
  REQUIRE(bed.service->containers().Destroy(a->id).ok());
  CHECK(bed.vmm->docker_requests == requests);

  // A violation seen by Stop (it refreshes the container first) fails the container the same way.
  bed.vmm->script.violate_docker = 1;  // b's inspect (Stop refreshes it first)
  auto s2 = bed.service->containers().Stop(b->id);
  REQUIRE_MESSAGE(s2.ok(), s2.status().ToString());
  CHECK(s2->state == ContainerState::kFailed);
  CHECK(s2->vm_state == "failed");
  CHECK(bed.vmm->live == 0);
}
