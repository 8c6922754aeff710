#include "fcwarm/container_manager.hpp"

#include <spdlog/spdlog.h>

#include <cmath>
#include <mutex>
#include <set>
#include <thread>

#include "core/container_request.hpp"
#include "docker/docker_client.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/image_reference.hpp"
#include "net/ports.hpp"
#include "store/containers.hpp"
#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"
#include "util/failpoint.hpp"
#include "util/scope_guard.hpp"
#include "util/worker_pool.hpp"

namespace fcwarm {

namespace {

using Clock = std::chrono::steady_clock;
using detail::ContainerRow;

constexpr size_t kMaxLogBytes = 1 << 20;
constexpr size_t kMaxPorts = 64;
// How often a running pull's progress is written to its record.
constexpr std::chrono::milliseconds kPullProgressInterval{250};

// Still on its way to running: provisioning or pulling.
bool Starting(ContainerState s) { return s == ContainerState::kProvisioning || s == ContainerState::kPulling; }

const std::pair<ContainerState, std::string_view> kStateNames[] = {
    {ContainerState::kProvisioning, "provisioning"}, {ContainerState::kPulling, "pulling"},
    {ContainerState::kRunning, "running"},
    {ContainerState::kExited, "exited"},             {ContainerState::kStopped, "stopped"},
    {ContainerState::kFailed, "failed"},             {ContainerState::kLost, "lost"},
    {ContainerState::kDestroyed, "destroyed"},
};

// Until the container has its own timings (set when it starts or fails), it shows its VM's progress; a
// failed container without an error of its own shows its VM's.
ContainerRow WithVmFallbacks(ContainerRow row) {
  auto& c = row.rec;
  if (c.timings.empty()) c.timings = row.vm_timings;
  if (c.last_error.empty() && c.state == ContainerState::kFailed) c.last_error = row.vm_last_error;
  return row;
}

}  // namespace

std::string_view ToString(ContainerState v) {
  for (const auto& [s, n] : kStateNames)
    if (s == v) return n;
  return "unknown";
}

Result<ContainerState> ParseContainerState(std::string_view s) {
  for (const auto& [v, n] : kStateNames)
    if (n == s) return v;
  return Status::InvalidArgument("container state: unknown value '" + std::string(s.substr(0, 64)) + "'");
}

class ContainerManager::Impl {
 public:
  Impl(Store& store, ImageRegistry& images, RestoreEngine& engine, ContainerOptions opts)
      : store_(store),
        images_(images),
        engine_(engine),
        opts_(std::move(opts)),
        starts_(std::make_unique<util::WorkerPool>("fcw-start", opts_.start_workers, opts_.start_queue)) {
    // After a restart (live restore, docs/operations.md): a running container whose VM the engine re-adopted
    // keeps running; one whose VM is gone is lost. A start the restart interrupted fails, and its VM (if it
    // got that far and was re-adopted) is destroyed: nobody will finish that start.
    std::vector<std::string> interrupted;
    int lost = 0, kept = 0;
    auto st = detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
      auto now = util::NowMillis();
      for (const auto& row : detail::ListContainers(db, false)) {
        if (Starting(row.rec.state)) interrupted.push_back(row.rec.id);
        if (row.rec.state != ContainerState::kRunning) continue;
        if (engine_.Handle(row.rec.id).ok()) {
          ++kept;
          continue;
        }
        detail::SetContainerState(db, row.rec.id, ContainerState::kLost,
                                  "owner process restarted and its VM could not be re-adopted", now);
        ++lost;
      }
      (void)detail::FailProvisioningContainers(db, "interrupted: the owning process restarted while it was provisioning",
                                               now);
      return Status::Ok();
    });
    if (!st.ok()) spdlog::error("containers: reconciliation failed: {}", st.ToString());
    for (const auto& id : interrupted) {
      if (engine_.Handle(id).ok()) (void)engine_.Destroy(id);
    }
    if (!interrupted.empty() || lost || kept) {
      spdlog::warn("reconcile: {} container(s) interrupted while provisioning, {} lost, {} still running", 
                   interrupted.size(), lost, kept);
    }
  }

  // Starts still queued fail; running ones finish (a VM boot cannot be cancelled halfway).
  ~Impl() {
    (void)starts_->Shutdown(/*drain=*/false);
    std::set<std::string> queued;
    {
      std::lock_guard lock(mu_);
      queued.swap(queued_);
    }
    for (const auto& id : queued) (void)Abandon(id, "the process shut down before provisioning started");
  }

  Result<ContainerRecord> CreateAsync(const ContainerRequest& req) {
    auto prepared = Prepare(req);
    if (!prepared.ok()) return prepared;
    const std::string id = prepared->id;
    {
      std::lock_guard lock(mu_);
      queued_.insert(id);
    }
    bool submitted = starts_->Submit([this, id] {
      {
        std::lock_guard lock(mu_);
        if (!queued_.erase(id)) return;  // abandoned by the destructor already
      }
      auto r = Start(id);
      if (!r.ok()) spdlog::warn("container={} event=provision_failed error=\"{}\"", id, r.status().ToString());
    });
    if (!submitted) {
      {
        std::lock_guard lock(mu_);
        queued_.erase(id);
      }
      const std::string why = "too many containers are being provisioned (" + std::to_string(opts_.start_queue) +
                              " queued); retry later";
      (void)Abandon(id, why);
      return Status::ResourceExhausted(why);
    }
    return prepared;
  }

  Result<ContainerRecord> Prepare(const ContainerRequest& req) {
    auto image = internal::Validate(req, opts_.default_runtime_image, images_);
    if (!image.ok()) return image.status();
    ContainerRecord rec;
    rec.id = req.id.empty() ? Id::Generate().str() : req.id;
    rec.name = req.name;
    rec.runtime_image_id = image->id;
    rec.runtime = internal::RuntimeOf(*image);
    rec.image = req.image;
    rec.command = req.command;
    rec.env = req.env;
    rec.working_dir = req.working_dir;
    rec.user = req.user;
    rec.read_only = req.read_only;
    if (req.ports.size() > kMaxPorts) {
      return Status::InvalidArgument("ports: more than " + std::to_string(kMaxPorts) + " entries");
    }
    auto ports = net::ParsePorts(req.ports, opts_.publish_address, "ports");
    if (!ports.ok()) return ports.status();
    std::optional<int64_t> wait_ms;
    if (req.wait_for_creating) wait_ms = req.wait_for_creating->count();
    const std::string& id = rec.id;
    // Checking the host ports and recording them is one step, so two requests cannot take one port.
    std::lock_guard ports_lock(ports_mu_);
    auto st = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      if (detail::ContainerExists(db, id) || detail::VmExists(db, id)) {
        return Status::AlreadyExists("id: a container or VM with id '" + id + "' exists already");
      }
      if (!ports->empty()) {
        std::vector<net::PortMapping> published;
        for (const auto& p : detail::PublishedPorts(db)) {
          if (auto m = net::ParsePort(p); m.ok()) published.push_back(*m);
        }
        if (auto ps = net::AssignHostPorts(&*ports, published); !ps.ok()) return ps;
        for (const auto& m : *ports) rec.ports.push_back(m.ToString());
      }
      detail::InsertContainer(db, rec, req.force_cold, wait_ms, util::NowMillis());
      return Status::Ok();
    });
    if (!st.ok()) return st;
    if (auto fp = FCWARM_FAILPOINT_CHECK("container.create"); !fp.ok()) {  // recorded, not started
      (void)Abandon(id, fp.message());
      return fp;
    }
    {
      std::lock_guard lock(mu_);
      provisioning_.insert(id);
    }
    return Read(id);
  }

  Result<ContainerRecord> Start(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto t_total = Clock::now();
    auto claimed = detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
      if (detail::ClaimContainer(db, id, util::NowMillis())) return Status::Ok();
      auto row = detail::ContainerById(db, id);
      if (!row.ok()) return row.status();
      return Status::FailedPrecondition("container '" + id + "' is " + std::string(ToString(row->rec.state)) +
                                        " and cannot be started again");
    });
    if (!claimed.ok()) return claimed;
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    util::ScopeGuard done([&] {
      std::lock_guard lock(mu_);
      provisioning_.erase(id);
    });

    ProvisionRequest preq;
    preq.runtime_image_id = row->rec.runtime_image_id;
    preq.vm_id = id;
    preq.name = row->rec.name;
    preq.force_cold = row->force_cold;
    preq.ports = row->rec.ports;
    if (row->wait_for_creating_ms) preq.wait_for_creating = std::chrono::milliseconds(*row->wait_for_creating_ms);
    auto vm = engine_.Provision(preq);
    if (!vm.ok()) {
      Timings t;
      if (auto v = engine_.Get(id); v.ok()) t = v->timings;
      Finish(id, ContainerState::kFailed, vm.status().message(), &t);
      return vm.status();
    }
    Timings timings = vm->timings;
    if (auto it = timings.find("total"); it != timings.end()) {
      timings["provision"] = it->second;
      timings.erase(it);
    }
    auto handle = engine_.Handle(id);
    FCWARM_FAILPOINT_INTO("container.start", handle);  // the VM runs, the container's command or Docker not
    if (!handle.ok()) {
      Finish(id, ContainerState::kFailed, handle.status().message(), &timings);
      (void)engine_.Destroy(id);
      return handle.status();
    }
    Status st = row->rec.runtime == "docker" ? StartDocker(id, row->rec, *vm, **handle, timings)
                                             : StartVm(id, row->rec, **handle, timings);
    timings["total"] = util::MsSince(t_total);
    if (!st.ok()) {
      // A guest that broke the agent protocol is not trusted again: its VM fails (stopped first, so that a
      // failed container never shows a running VM) rather than being destroyed like a VM whose container
      // merely failed.
      const bool violated = st.code() == StatusCode::kDataLoss;
      if (violated) (void)engine_.Fail(id, st.message());
      Finish(id, ContainerState::kFailed, st.message(), &timings);
      if (!violated) (void)engine_.Destroy(id);
      spdlog::warn("container {}: start failed: {}", id, st.ToString());
      return st;
    }
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetContainerTimings(db, id, timings, util::NowMillis()); });
    auto out = Read(id);
    if (out.ok()) LogProvisioned(*out, timings["total"]);
    return out;
  }

  Status Abandon(const std::string& id, const std::string& reason) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto st = detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
      if (detail::AbandonContainer(db, id, reason, util::NowMillis())) return Status::Ok();
      if (!detail::ContainerExists(db, id)) return Status::NotFound("container '" + id + "' not found");
      return Status::FailedPrecondition("container '" + id + "' was started already");
    });
    if (st.ok()) {
      std::lock_guard lock(mu_);
      provisioning_.erase(id);
    }
    return st;
  }

  Result<ContainerRecord> Get(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    Refresh(*row);
    return row->rec;
  }

  Result<std::vector<ContainerRecord>> List(bool include_destroyed) {
    auto rows = detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<std::vector<ContainerRow>> {
      return detail::ListContainers(db, include_destroyed);
    });
    if (!rows.ok()) return rows.status();
    std::vector<ContainerRecord> out;
    for (auto& r : *rows) {
      r = WithVmFallbacks(std::move(r));
      Refresh(r);
      out.push_back(std::move(r.rec));
    }
    return out;
  }

  Result<ContainerRecord> Wait(const std::string& id, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    auto poll = std::chrono::milliseconds(20);
    while (true) {
      auto r = Get(id);
      if (!r.ok()) return r;
      if (!Starting(r->state) && r->state != ContainerState::kRunning) return r;
      if (Clock::now() >= deadline) return r;
      std::this_thread::sleep_for(std::min(poll, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                     deadline - Clock::now()) + std::chrono::milliseconds(1)));
      poll = std::min(poll * 2, std::chrono::milliseconds(200));
    }
  }

  Result<ContainerLogs> Logs(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    if (row->rec.runtime == "docker" && !row->rec.docker_id.empty()) {
      auto live = FetchDockerLogs(row->rec);
      if (live.ok()) return live;
      if (!row->has_logs) return live.status();
    }
    if (row->has_logs) return StoredLogs(id);
    if (Starting(row->rec.state)) {
      return Status::FailedPrecondition("container '" + id + "' is still provisioning; it has no output yet");
    }
    if (row->rec.runtime == "vm" && row->rec.command.empty()) {
      return Status::FailedPrecondition("container '" + id +
                                        "' has no command (its VM is the container), so it has no output");
    }
    return Status::FailedPrecondition("container '" + id + "' has no output: " +
                                      (row->rec.last_error.empty() ? std::string("it never started")
                                                                   : row->rec.last_error));
  }

  Result<ContainerRecord> Stop(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    if (Starting(row->rec.state)) {
      return Status::FailedPrecondition("container '" + id + "' is still " + std::string(ToString(row->rec.state)));
    }
    Refresh(*row);
    // An exited container's output was kept when its exit was seen; fetch it only if that did not happen.
    if (row->rec.state == ContainerState::kRunning || !row->has_logs) {
      if (CaptureLogs(row->rec)) return Get(id);  // its guest broke the protocol: failed, VM stopped
    }
    if (auto st = engine_.Stop(id); !st.ok() && st.code() != StatusCode::kNotFound) return st;
    if (row->rec.state == ContainerState::kRunning) SetState(id, ContainerState::kStopped, "");
    return Get(id);
  }

  Status Destroy(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    if (Starting(row->rec.state)) {
      return Status::FailedPrecondition("container '" + id + "' is still " + std::string(ToString(row->rec.state)) +
                                        "; delete it once it runs");
    }
    if (row->rec.state == ContainerState::kDestroyed) return Status::Ok();
    if (auto st = engine_.Destroy(id); !st.ok() && st.code() != StatusCode::kNotFound) return st;
    SetState(id, ContainerState::kDestroyed, row->rec.last_error);
    return Status::Ok();
  }

  std::chrono::milliseconds StartDeadline() const {
    // The VM, then either Docker's requests (image inspect, a pull with its own deadline, inspect again,
    // create, start) or one command, each with its channel margin.
    constexpr std::chrono::milliseconds kChannelMargin{5000};
    auto docker = 4 * (opts_.docker_timeout + kChannelMargin) + opts_.pull_timeout + kChannelMargin;
    auto exec = opts_.exec_timeout + kChannelMargin;
    return engine_.ProvisionDeadline() + std::max(docker, exec);
  }

  int Provisioning() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(provisioning_.size());
  }

 private:
  // The line operators grep for: "... provisioned via warm boot (saved ~N s)" or "... via cold boot (reason)".
  void LogProvisioned(const ContainerRecord& c, double total_ms) const {
    std::string who = c.name.empty() ? c.id : c.id + " (" + c.name + ")";
    if (c.boot_method == BootMethod::kWarm) {
      auto cold_ms = engine_.MeasuredColdBootMs(c.runtime_image_id);
      std::string saved = cold_ms ? "saved ~" + std::to_string(std::lround(std::max(0.0, *cold_ms - total_ms) / 1000)) + "s"
                                  : "saved: no cold boot of this runtime image measured yet";
      spdlog::info("Container {} fully provisioned via warm boot ({}) in {:.0f} ms, {}", who, saved, total_ms,
                   ToString(c.state));
    } else {
      spdlog::info("Container {} fully provisioned via cold boot ({}) in {:.0f} ms, {}", who,
                   c.fallback_reason == FallbackReason::kNone ? "no_snapshot" : ToString(c.fallback_reason), total_ms,
                   ToString(c.state));
    }
  }

  // A Docker client for the container inside `vm`, through its guest agent.
  docker::Client DockerIn(Vm& vm) const {
    return docker::Client(std::make_unique<docker::GuestTransport>(vm.guest()),
                          {opts_.docker_api_version, opts_.docker_timeout});
  }

  // Docker's name for the container: the record's name, else its id (both valid Docker names).
  static std::string DockerName(const ContainerRecord& c) { return c.name.empty() ? c.id : c.name; }

  // The parked container of the VM's snapshot that can run `c`, or why there is none (a container_path_reason,
  // docs/docker-runtime.md "Parked containers").
  Result<ParkedContainer> ParkedFor(const ContainerRecord& c, const VmRecord& vm) {
    if (vm.boot_method != BootMethod::kWarm || vm.snapshot_id.empty()) return Status::NotFound("cold_boot");
    auto snap = detail::DbOf(store_).With(
        [&](SQLite::Database& db) { return detail::SnapshotById(db, vm.snapshot_id); });
    if (!snap.ok()) return Status::NotFound("snapshot_gone");
    if (snap->parked.empty()) return Status::NotFound("snapshot_has_no_parked_containers");
    if (snap->generation != vm.generation) return Status::NotFound("snapshot_rebuilt");
    auto want = ParseImageReference(c.image, "image");
    if (!want.ok()) return Status::NotFound("image_not_parked");
    const ParkedContainer* found = nullptr;
    for (const auto& p : snap->parked) {
      auto have = ParseImageReference(p.image, "image");
      if (have.ok() && have->Normalized() == want->Normalized()) found = &p;
    }
    if (!found) return Status::NotFound("image_not_parked");
    // What a started container cannot change any more (HostConfig is fixed at create).
    if (c.read_only) return Status::NotFound("read_only");
    return *found;
  }

  void SetPath(const std::string& id, const std::string& path, const std::string& reason) {
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetContainerPath(db, id, path, reason, util::NowMillis()); });
  }

  Status StartDocker(const std::string& id, const ContainerRecord& c, const VmRecord& vm_rec, Vm& vm,
                     Timings& timings) {
    std::string reason;
    if (auto parked = ParkedFor(c, vm_rec); parked.ok()) {
      auto st = StartParked(id, c, *parked, vm, timings);
      if (st.code() != StatusCode::kFailedPrecondition) return st;
      // Nothing was delivered (no launcher waiting, an agent without the op): the created path.
      reason = "launch_unavailable: " + st.message();
      spdlog::warn("container {}: parked container {} not usable, creating one: {}", id, parked->name, st.message());
    } else {
      reason = parked.status().message();
    }
    SetPath(id, "created", reason);
    return StartCreated(id, c, vm, timings);
  }

  // The parked path: the snapshot's container of this image gets the command (its launcher execs it as PID 1),
  // then, in the background, Docker's name. FailedPrecondition: nothing was delivered, the caller takes the
  // created path.
  Status StartParked(const std::string& id, const ContainerRecord& c, const ParkedContainer& p, Vm& vm,
                     Timings& timings) {
    LaunchRequest lr;
    lr.channel = p.channel;
    lr.argv = p.entrypoint;  // Docker's rule: the image's Entrypoint, then the request's command or the image's Cmd
    const auto& cmd = c.command.empty() ? p.cmd : c.command;
    lr.argv.insert(lr.argv.end(), cmd.begin(), cmd.end());
    if (lr.argv.empty()) {
      return Status::InvalidArgument("command: none given and image " + c.image + " has no Entrypoint or Cmd");
    }
    lr.env = p.env;
    for (const auto& [k, v] : c.env) lr.env.push_back(k + "=" + v);
    lr.cwd = c.working_dir.empty() ? p.working_dir : c.working_dir;
    lr.user = c.user.empty() ? p.user : c.user;
    lr.hostname_file = "/etc/hostname";
    lr.timeout = std::chrono::milliseconds(5000);
    auto t = Clock::now();
    auto launched = vm.guest().Launch(lr, lr.timeout + std::chrono::seconds(5));
    timings["container_launch"] = util::MsSince(t);
    if (launched.code() == StatusCode::kFailedPrecondition) return launched;
    SetPath(id, "parked", "");
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetContainerDockerId(db, id, p.docker_id, util::NowMillis()); });
    if (!launched.ok()) return launched.WithContext("launch in parked container " + p.name);
    if (auto mark = MarkRunning(id); !mark.ok()) return mark;
    // The command runs: the name is cosmetic, so the rename (≈ 0.3-0.8 s of dockerd in a fresh TCG clone) runs
    // on a start worker after the container is reported running, never on the request's path.
    auto rename = [this, id, docker_id = p.docker_id, name = DockerName(c), parked = p.name] {
      auto handle = engine_.Handle(id);
      if (!handle.ok()) return;
      auto t0 = Clock::now();
      if (auto st = DockerIn(**handle).Rename(docker_id, name); !st.ok()) {
        if (Distrust(id, st)) return;
        spdlog::warn("container {}: the parked container keeps its name {}: {}", id, parked, st.ToString());
        return;
      }
      spdlog::debug("container {}: renamed {} to {} in {:.0f} ms", id, parked, name, util::MsSince(t0));
    };
    if (!starts_->Submit(rename)) rename();
    return Status::Ok();
  }

  Status StartCreated(const std::string& id, const ContainerRecord& c, Vm& vm, Timings& timings) {
    docker::ContainerConfig config;
    config.name = DockerName(c);
    config.image = c.image;
    config.cmd = c.command;
    for (const auto& [k, v] : c.env) config.env.push_back(k + "=" + v);
    config.working_dir = c.working_dir;
    config.user = c.user;
    config.read_only = c.read_only;
    config.labels = {{"org.fcwarm.container", id}};
    // One container per VM, in the VM's own network namespace: its ports are the VM's (published ports
    // forward to the VM's address), its DNS and egress the VM's. The runtime's dockerd runs without a bridge.
    config.network_mode = "host";
    auto client = DockerIn(vm);
    if (auto st = PullIfMissing(id, c.image, client, vm, timings); !st.ok()) return st;
    auto t = Clock::now();
    auto created = client.Create(config);
    timings["container_create"] = util::MsSince(t);
    if (!created.ok()) return created.status();
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetContainerDockerId(db, id, *created, util::NowMillis()); });
    t = Clock::now();
    auto started = client.Start(*created);
    timings["container_start"] = util::MsSince(t);
    if (!started.ok()) return started;
    return MarkRunning(id);
  }

  // Pulls the container image when the guest's daemon does not have it (state `pulling` meanwhile).
  // `client` asks with the usual request deadline; the pull gets ContainerOptions::pull_timeout.
  Status PullIfMissing(const std::string& id, const std::string& image, docker::Client& client, Vm& vm,
                       Timings& timings) {
    auto has = client.HasImage(image);
    if (!has.ok()) return has.status();
    if (*has) return Status::Ok();
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetContainerPulling(db, id, true, util::NowMillis()); });
    spdlog::info("container {}: pulling {}", id, image);
    docker::Client puller(std::make_unique<docker::GuestTransport>(vm.guest()),
                          {opts_.docker_api_version, opts_.pull_timeout});
    auto t = Clock::now();
    // The record follows the progress stream, at most every kPullProgressInterval (and once it started).
    auto recorded = Clock::time_point{};
    auto on_progress = [&](const docker::PullProgress& p) {
      auto now = Clock::now();
      if (now - recorded < kPullProgressInterval) return;
      recorded = now;
      ImagePull live{p.layers, p.bytes, util::MsSince(t), p.layers_total, p.bytes_total, false};
      (void)detail::DbOf(store_).Do(
          [&](SQLite::Database& db) { detail::RecordImagePull(db, id, live, util::NowMillis()); });
    };
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::RecordImagePull(db, id, ImagePull{}, util::NowMillis()); });
    // Believes the daemon when the progress stream was cut short.
    auto pulled = puller.PullChecked(image, on_progress);
    timings["pull"] = util::MsSince(t);
    if (!pulled.ok()) return pulled.status().WithContext("pull " + image);
    ImagePull info{pulled->layers, pulled->bytes, timings["pull"], pulled->layers, pulled->bytes, true};
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) {
      detail::RecordImagePull(db, id, info, util::NowMillis());
      detail::SetContainerPulling(db, id, false, util::NowMillis());
    });
    spdlog::info("container {}: pulled {} ({} layer(s), {} bytes) in {:.0f} ms", id, image, info.layers, info.bytes,
                 info.ms);
    return Status::Ok();
  }

  Status MarkRunning(const std::string& id) {
    return detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::MarkContainerRunning(db, id, util::NowMillis()); });
  }

  Status StartVm(const std::string& id, const ContainerRecord& c, Vm& vm, Timings& timings) {
    if (c.command.empty()) return MarkRunning(id);
    auto now = util::NowMillis();
    ExecRequest er;
    if (c.env.empty()) {
      er.argv = c.command;
    } else {  // env(1) sets the variables without a shell
      er.argv = {"env"};
      for (const auto& [k, v] : c.env) er.argv.push_back(k + "=" + v);
      er.argv.insert(er.argv.end(), c.command.begin(), c.command.end());
    }
    er.timeout = opts_.exec_timeout;
    auto t = Clock::now();
    auto r = vm.guest().Exec(er, opts_.exec_timeout + std::chrono::seconds(5));
    timings["exec"] = util::MsSince(t);
    if (!r.ok()) return r.status().WithContext("command");
    ContainerLogs logs{r->stdout_data, r->stderr_data, r->truncated};
    return detail::DbOf(store_).Do([&](SQLite::Database& db) {
      detail::RecordCommandExit(db, id, r->exit_code, logs, now, util::NowMillis());
    });
  }

  // Asks the daemon about a running docker container; records an exit (with its output).
  void Refresh(ContainerRow& row) {
    auto& c = row.rec;
    if (c.runtime != "docker" || c.state != ContainerState::kRunning || c.docker_id.empty()) return;
    auto handle = engine_.Handle(c.id);
    if (!handle.ok()) return;
    auto state = DockerIn(**handle).Inspect(c.docker_id);
    if (!state.ok()) {
      if (Distrust(c.id, state.status())) {
        c.state = ContainerState::kFailed;
        c.last_error = state.status().message();
        return;
      }
      spdlog::debug("container {}: inspect failed: {}", c.id, state.status().ToString());
      return;
    }
    if (!state->Exited()) return;
    int code = state->exit_code;
    auto logs = FetchDockerLogs(c);
    auto now = util::NowMillis();
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::RecordContainerExit(db, c.id, code, now); });
    if (logs.ok()) {
      StoreLogs(c.id, *logs);
      row.has_logs = true;
    }
    c.state = ContainerState::kExited;
    c.exit_code = code;
    c.finished_at = now;
    c.updated_at = now;
  }

  Result<ContainerLogs> FetchDockerLogs(const ContainerRecord& c) {
    auto handle = engine_.Handle(c.id);
    if (!handle.ok()) return Status::FailedPrecondition("container '" + c.id + "': its VM is not running");
    auto out = DockerIn(**handle).Logs(c.docker_id);
    if (!out.ok()) {
      (void)Distrust(c.id, out.status());
      return out.status();
    }
    return ContainerLogs{std::move(out->stdout_data), std::move(out->stderr_data), out->truncated};
  }

  // Keeps a copy of a docker container's output before its VM goes away. True when the guest broke the agent
  // protocol instead (Distrust).
  bool CaptureLogs(const ContainerRecord& c) {
    if (c.runtime != "docker" || c.docker_id.empty()) return false;
    auto logs = FetchDockerLogs(c);
    if (logs.ok()) StoreLogs(c.id, *logs);
    return !logs.ok() && logs.status().code() == StatusCode::kDataLoss;
  }

  // A call on the container's guest returned DataLoss: the guest broke the agent protocol (docs/guest-protocol.md,
  // "Limits") and is not trusted again. The engine fails its VM (stopped, resources released, record `failed`);
  // a running container fails with the violation as its error (one that ended already keeps its outcome).
  // False for any other status.
  bool Distrust(const std::string& id, const Status& st) {
    if (st.code() != StatusCode::kDataLoss) return false;
    spdlog::error("container {}: its guest broke the agent protocol: {}", id, st.message());
    (void)engine_.Fail(id, st.message());
    auto row = ReadRowById(id);
    if (row.ok() && row->rec.state == ContainerState::kRunning) SetState(id, ContainerState::kFailed, st.message());
    return true;
  }

  void StoreLogs(const std::string& id, ContainerLogs logs) {
    if (logs.stdout_data.size() > kMaxLogBytes) logs.stdout_data.resize(kMaxLogBytes), logs.truncated = true;
    if (logs.stderr_data.size() > kMaxLogBytes) logs.stderr_data.resize(kMaxLogBytes), logs.truncated = true;
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::StoreContainerLogs(db, id, logs); });
  }

  Result<ContainerLogs> StoredLogs(const std::string& id) {
    return detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::StoredContainerLogs(db, id); });
  }

  void Finish(const std::string& id, ContainerState state, const std::string& error, const Timings* timings) {
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) {
      detail::FinishContainer(db, id, state, error, timings, util::NowMillis());
    });
  }

  void SetState(const std::string& id, ContainerState state, const std::string& error) {
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetContainerState(db, id, state, error, util::NowMillis()); });
  }

  Result<ContainerRow> ReadRowById(const std::string& id) {
    auto row = detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ContainerById(db, id); });
    if (!row.ok()) return row;
    return WithVmFallbacks(std::move(row).value());
  }

  Result<ContainerRecord> Read(const std::string& id) {
    auto r = ReadRowById(id);
    if (!r.ok()) return r.status();
    return r->rec;
  }

  Store& store_;
  ImageRegistry& images_;
  RestoreEngine& engine_;
  ContainerOptions opts_;
  mutable std::mutex mu_;
  std::mutex ports_mu_;  // held while a request's host ports are checked and recorded
  std::set<std::string> provisioning_;
  std::set<std::string> queued_;  // handed to starts_ by CreateAsync(), not started yet
  std::unique_ptr<util::WorkerPool> starts_;  // last member: its threads stop before the rest is destroyed
};

ContainerManager::ContainerManager(Store& store, ImageRegistry& images, RestoreEngine& engine,
                                   ContainerOptions options)
    : impl_(std::make_unique<Impl>(store, images, engine, std::move(options))) {}
ContainerManager::~ContainerManager() = default;

Result<ContainerRecord> ContainerManager::Prepare(const ContainerRequest& r) { return impl_->Prepare(r); }
Result<ContainerRecord> ContainerManager::Start(const std::string& id) { return impl_->Start(id); }
Result<ContainerRecord> ContainerManager::Create(const ContainerRequest& r) {
  auto p = impl_->Prepare(r);
  if (!p.ok()) return p;
  return impl_->Start(p->id);
}
Result<ContainerRecord> ContainerManager::CreateAsync(const ContainerRequest& r) { return impl_->CreateAsync(r); }
Status ContainerManager::Abandon(const std::string& id, const std::string& reason) { return impl_->Abandon(id, reason); }
Result<ContainerRecord> ContainerManager::Get(const std::string& id) { return impl_->Get(id); }
Result<std::vector<ContainerRecord>> ContainerManager::List(bool d) { return impl_->List(d); }
Result<ContainerRecord> ContainerManager::Wait(const std::string& id, std::chrono::milliseconds t) {
  return impl_->Wait(id, t);
}
Result<ContainerLogs> ContainerManager::Logs(const std::string& id) { return impl_->Logs(id); }
Result<ContainerRecord> ContainerManager::Stop(const std::string& id) { return impl_->Stop(id); }
Status ContainerManager::Destroy(const std::string& id) { return impl_->Destroy(id); }
int ContainerManager::Provisioning() const { return impl_->Provisioning(); }
std::chrono::milliseconds ContainerManager::StartDeadline() const { return impl_->StartDeadline(); }

}  // namespace fcwarm
