#include "fcwarm/restore_engine.hpp"

#include <arpa/inet.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <filesystem>
#include <map>
#include <mutex>

#include "backends/host_leftovers.hpp"
#include "core/clone_pool.hpp"
#include "core/live_restore.hpp"
#include "core/guest_network.hpp"
#include "core/internal.hpp"
#include "net/iptables.hpp"
#include "net/ports.hpp"
#include "fcwarm/ids.hpp"
#include "store/images.hpp"
#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"
#include "util/failpoint.hpp"
#include "util/process.hpp"
#include "util/scope_guard.hpp"

namespace fcwarm {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

using Clock = std::chrono::steady_clock;

struct WarmFailure {
  FallbackReason reason;
  std::string message;
};

}  // namespace

class RestoreEngine::Impl {
 public:
  Impl(Store& store, VmmRegistry& vmms, SnapshotManager& snapshots, HealthTracker& health, RestoreOptions opts)
      : store_(store), vmms_(vmms), snapshots_(snapshots), health_(health), opts_(std::move(opts)) {
    in_addr a{};
    if (::inet_pton(AF_INET, opts_.address_pool_base.c_str(), &a) == 1) pool_base_ = ntohl(a.s_addr);
    (void)util::MakeDirs(opts_.vm_dir);
    auto net = internal::ResolveGuestNetwork(opts_);  // Service::Open refuses invalid settings first
    if (net.ok()) {
      guest_net_ = std::move(net).value();
    } else {
      spdlog::error("restore options: {}; VMs get no egress, resolvers or registry settings", net.status().ToString());
    }
    AdoptRunningVms();
    StartPool();
  }

  ~Impl() {
    // The pool first: its thread uses everything below, and its clones are destroyed with it.
    if (build_listener_ >= 0) snapshots_.RemoveBuildListener(build_listener_);
    if (pool_) pool_->Stop();
    pool_.reset();
    std::map<std::string, std::shared_ptr<Vm>> live;
    {
      std::lock_guard lock(mu_);
      live.swap(live_);
    }
    int left = 0;
    for (auto& [id, vm] : live) {
      if (!opts_.stop_vms_on_exit) {
        auto detached = vm->Detach();
        if (detached.ok()) {
          ++left;
          continue;
        }
        spdlog::warn("vm {}: cannot leave it running ({}); stopping it", id, detached.ToString());
      }
      (void)vm->Stop(opts_.stop_grace);
      Release(id, VmState::kStopped, "");
    }
    if (left > 0) spdlog::info("shutdown: {} VM(s) left running for the next start to adopt", left);
    // The last fcwarm process on the host with egress rules takes the fcwarm chains away with it (refused, and
    // harmless, while another process's VMs still have rules).
    if (!guest_net_.egress.empty()) {
      if (auto st = net::RemoveBaseChains({}); !st.ok()) spdlog::debug("fcwarm chains stay: {}", st.ToString());
    }
  }

  // Published ports reach the backend fully resolved: every part set, no two on one host port.
  Status CheckPublished(const std::vector<std::string>& ports) const {
    if (ports.empty()) return Status::Ok();
    if (!opts_.allocate_network) {
      return Status::FailedPrecondition("ports: VMs of this engine have no network (allocate_network is off)");
    }
    auto parsed = net::ParsePorts(ports, "127.0.0.1", "ports");
    if (!parsed.ok()) return parsed.status();
    for (size_t i = 0; i < parsed->size(); ++i) {
      const auto& m = (*parsed)[i];
      if (m.host_port == 0 || ports[i] != m.ToString()) {
        return Status::InvalidArgument("ports[" + std::to_string(i) + "]: '" + ports[i] +
                                       "' is not resolved (HOST_IP:HOST_PORT:GUEST_PORT/PROTO, e.g. " +
                                       "127.0.0.1:8080:80/tcp)");
      }
    }
    return Status::Ok();
  }

  Result<VmRecord> Provision(const ProvisionRequest& req) {
    auto t_total = Clock::now();
    if (auto p = Id::Parse("runtime_image_id", req.runtime_image_id); !p.ok()) return p.status();
    if (!req.name.empty()) {
      if (auto st = ValidateName("name", req.name); !st.ok()) return st;
    }
    if (!req.vm_id.empty()) {
      if (auto p = Id::Parse("vm_id", req.vm_id); !p.ok()) return p.status();
    }
    if (req.wait_for_creating && (req.wait_for_creating->count() < 0 || *req.wait_for_creating > std::chrono::hours(1))) {
      return Status::InvalidArgument("wait_for_creating: must be between 0 and 3600000 ms");
    }
    if (auto st = CheckPublished(req.ports); !st.ok()) return st;
    auto image =
        detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ImageById(db, req.runtime_image_id); });
    if (!image.ok()) return image.status();
    auto vmm = vmms_.Find(image->backend);
    if (!vmm) return Status::FailedPrecondition("backend '" + image->backend + "' of image '" + image->name + "' is not available");

    // A clone from the pool when one is ready. A request that forces a cold boot or publishes ports takes none
    // (the backend publishes ports when the VMM process starts; docs/architecture.md, "The clone pool").
    if (pool_ && !req.force_cold && req.ports.empty() && pool_->Serves(image->id)) {
      auto taken = TakeFromPool(req, *image, t_total);
      if (!taken.ok()) return taken.status();
      if (taken->has_value()) return std::move(**taken);
    }

    auto created = NewVm(*image, req.vm_id, req.name, req.ports);
    if (!created.ok()) return created.status();
    VmRecord& rec = created->first;
    LaunchSpec& spec = created->second;

    Timings timings;
    std::string snapshot_id;
    std::unique_ptr<Vm> vm;
    FallbackReason reason = FallbackReason::kNoSnapshot;
    std::string detail;
    if (req.force_cold) {
      detail = "cold boot requested";
    } else {
      WarmFailure failure{FallbackReason::kNone, ""};
      auto warm = TryWarm(req.wait_for_creating.value_or(opts_.wait_for_creating), *image, *vmm, spec, rec, timings,
                          &snapshot_id, &failure);
      if (warm.ok()) {
        vm = std::move(warm).value();
        reason = FallbackReason::kNone;
      } else {
        reason = failure.reason;
        detail = failure.message;
      }
    }

    if (!vm) {
      if (!opts_.fallback_to_cold && !req.force_cold) {
        Release(rec.id, VmState::kFailed, detail);
        return Status::Unavailable("warm boot failed (" + std::string(ToString(reason)) + "): " + detail);
      }
      auto cold = ColdPath(*image, *vmm, spec, timings);
      if (!cold.ok()) {
        timings["total"] = util::MsSince(t_total);
        SetTimings(rec.id, timings);
        // The record says why there was no warm boot either (e.g. both failed on a full disk).
        Status failed = cold.status();
        if (!req.force_cold && reason != FallbackReason::kNoSnapshot) {
          failed = failed.WithContext("after the warm path failed (" + std::string(ToString(reason)) + ": " +
                                      detail.substr(0, 1000) + ")");
        }
        cold = failed;
        Release(rec.id, VmState::kFailed, cold.status().message());
        Event e;
        e.kind = EventKind::kBoot;
        e.runtime_image_id = image->id;
        e.vm_id = rec.id;
        e.outcome = "failed";
        e.reason = std::string(ToString(reason));
        e.timings = timings;
        e.message = "cold boot failed: " + cold.status().message();
        internal::Emit(store_, e);
        spdlog::error("vm {} (image {}): cold boot failed after fallback {}: {}", rec.id, image->name,
                      ToString(reason), cold.status().message());
        return cold.status().WithContext("cold boot of vm '" + rec.id + "'");
      }
      vm = std::move(cold).value();
    }

    timings["total"] = util::MsSince(t_total);
    BootMethod method = reason == FallbackReason::kNone ? BootMethod::kWarm : BootMethod::kCold;
    if (auto w = internal::WriteAdoptionRecord(spec, vmm->Kind()); !w.ok()) {
      spdlog::warn("vm {}: no adoption record, a restart will lose it: {}", rec.id, w.ToString());
    }
    std::shared_ptr<Vm> shared(std::move(vm));
    {
      std::lock_guard lock(mu_);
      live_[rec.id] = shared;
    }
    auto st = detail::DbOf(store_).Do([&](SQLite::Database& db) {
      detail::MarkVmRunning(db, rec.id, method, reason, timings, util::NowMillis());
    });
    if (!st.ok()) spdlog::error("vm {}: cannot record state: {}", rec.id, st.ToString());
    if (method == BootMethod::kCold) RememberColdBoot(image->id, timings["total"]);

    Event e;
    e.kind = EventKind::kBoot;
    e.runtime_image_id = image->id;
    e.snapshot_id = snapshot_id;
    e.vm_id = rec.id;
    e.outcome = std::string(ToString(method));
    e.reason = std::string(ToString(reason));
    e.timings = timings;
    if (method == BootMethod::kWarm) {
      auto cold_ms = MeasuredColdBootMs(image->id);
      if (cold_ms) {
        e.message = "warm restore; saved " + std::to_string(static_cast<int64_t>(*cold_ms - timings["total"])) +
                    " ms versus the measured cold boot mean of " + std::to_string(static_cast<int64_t>(*cold_ms)) + " ms";
      } else {
        e.message = "warm restore; no cold boot of this image measured yet";
      }
      spdlog::info("vm {} (image {}): warm from snapshot {} in {:.0f} ms; {}", rec.id, image->name, snapshot_id,
                   timings["total"], e.message);
    } else {
      e.message = detail;
      spdlog::info("vm {} (image {}): cold boot in {:.0f} ms, reason {}: {}", rec.id, image->name, timings["total"],
                   ToString(reason), detail);
    }
    internal::Emit(store_, e);
    return Get(rec.id);
  }

  Status Stop(const std::string& vm_id) {
    if (auto p = Id::Parse("vm_id", vm_id); !p.ok()) return p.status();
    auto rec = Get(vm_id);
    if (!rec.ok()) return rec.status();
    if (rec->state == VmState::kPooled) {
      return Status::FailedPrecondition("vm '" + vm_id + "' is pooled: the clone pool owns it (it is destroyed when " +
                                        "it expires, its snapshot changes or the engine stops)");
    }
    std::shared_ptr<Vm> vm = TakeLive(vm_id);
    if (vm) (void)vm->Stop(opts_.stop_grace);
    internal::ForgetProcesses(store_, "vm:" + vm_id);
    if (rec->state == VmState::kRunning || rec->state == VmState::kStarting) {
      SetState(vm_id, VmState::kStopped, "");
    }
    return Status::Ok();
  }

  // Removes a VM from the live set; null when this engine does not run it.
  std::shared_ptr<Vm> TakeLive(const std::string& vm_id) {
    std::lock_guard lock(mu_);
    auto it = live_.find(vm_id);
    if (it == live_.end()) return nullptr;
    auto vm = std::move(it->second);
    live_.erase(it);
    return vm;
  }

  Status Destroy(const std::string& vm_id) {
    auto rec = Get(vm_id);
    if (auto st = Stop(vm_id); !st.ok()) return st;
    // A failed VM keeps the reason it failed.
    Release(vm_id, VmState::kDestroyed, rec.ok() && rec->state == VmState::kFailed ? rec->last_error : "");
    return Status::Ok();
  }

  Status Fail(const std::string& vm_id, const std::string& reason) {
    if (auto p = Id::Parse("vm_id", vm_id); !p.ok()) return p.status();
    auto rec = Get(vm_id);
    if (!rec.ok()) return rec.status();
    if (rec->state == VmState::kPooled) {
      return Status::FailedPrecondition("vm '" + vm_id + "' is pooled: the clone pool owns it");
    }
    std::shared_ptr<Vm> vm = TakeLive(vm_id);
    // Someone else failed or destroyed it first.
    if (!vm && (rec->state == VmState::kFailed || rec->state == VmState::kDestroyed)) return Status::Ok();
    spdlog::error("vm {}: its guest is not trusted any more, stopping it: {}", vm_id, reason);
    if (vm) (void)vm->Stop(opts_.stop_grace);
    vm.reset();
    Release(vm_id, VmState::kFailed, reason);
    return Status::Ok();
  }

  Result<VmRecord> Get(const std::string& vm_id) const {
    if (auto p = Id::Parse("vm_id", vm_id); !p.ok()) return p.status();
    return detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::VmById(db, vm_id); });
  }

  Result<std::vector<VmRecord>> List(bool include_destroyed) const {
    return detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<std::vector<VmRecord>> {
      return detail::ListVms(db, include_destroyed);
    });
  }

  Result<std::shared_ptr<Vm>> Handle(const std::string& vm_id) const {
    if (auto p = Id::Parse("vm_id", vm_id); !p.ok()) return p.status();
    std::lock_guard lock(mu_);
    auto it = live_.find(vm_id);
    if (it == live_.end()) return Status::NotFound("vm '" + vm_id + "' is not running in this process");
    return it->second;
  }

  std::optional<double> MeasuredColdBootMs(const std::string& image_id) const {
    {
      std::lock_guard lock(mu_);
      auto it = cold_boots_.find(image_id);
      if (it != cold_boots_.end() && !it->second.empty()) {
        double sum = 0;
        for (double v : it->second) sum += v;
        return sum / static_cast<double>(it->second.size());
      }
    }
    // Fall back to the event log (survives restarts): mean of the last 20 successful cold boots; before any, of
    // the last 20 successful snapshot builds' booting + waiting_runtime phases (a build VM boots cold and waits
    // for the runtime, which is what a cold boot does).
    auto r = detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<std::vector<double>> {
      std::vector<double> out;
      for (auto& t :
           detail::LatestEventTimings(db, EventKind::kBoot, std::string(ToString(BootMethod::kCold)), image_id, 20)) {
        if (t.count("total")) out.push_back(t["total"]);
      }
      if (!out.empty()) return out;
      for (auto& t : detail::LatestEventTimings(db, EventKind::kBuild, "ready", image_id, 20)) {
        if (t.count("booting") && t.count("waiting_runtime")) out.push_back(t["booting"] + t["waiting_runtime"]);
      }
      return out;
    });
    if (!r.ok() || r->empty()) return std::nullopt;
    double sum = 0;
    for (double v : *r) sum += v;
    return sum / static_cast<double>(r->size());
  }

  const RestoreOptions& options() const { return opts_; }
  const AdoptionReport& adoption_report() const { return adoption_; }

  std::vector<PoolStatus> Pool() const {
    if (pool_) return pool_->Status();
    std::vector<PoolStatus> out;  // every size is 0: no pool runs
    for (const auto& [ref, n] : opts_.pool) {
      PoolStatus s;
      s.image = ref;
      s.target = n;
      if (auto id = ResolveImage(ref); id.ok()) s.runtime_image_id = *id;
      out.push_back(std::move(s));
    }
    return out;
  }

  Status CheckPool() const {
    for (const auto& [ref, n] : opts_.pool) {
      if (auto id = ResolveImage(ref); !id.ok()) return id.status();
    }
    return Status::Ok();
  }

  void SetAfterRestoreHook(std::function<void(const std::string&, Vm&)> hook) {
    std::lock_guard lock(mu_);
    after_restore_hook_ = std::move(hook);
  }

 private:
  // The VM record (`starting`, with its address) and the launch spec of a new VM; the record exists from the
  // start so generation pins and addresses hang off it.
  Result<std::pair<VmRecord, LaunchSpec>> NewVm(const RuntimeImage& image, const std::string& vm_id,
                                                const std::string& name, const std::vector<std::string>& ports) {
    VmRecord rec;
    rec.id = vm_id.empty() ? Id::Generate().str() : vm_id;
    rec.instance_id = rec.id;
    rec.name = name;
    rec.runtime_image_id = image.id;
    rec.hostname = "fcw-" + rec.id.substr(0, 8);
    rec.work_dir = (fs::path(opts_.vm_dir) / rec.id).string();
    NetworkIdentity net;
    net.hostname = rec.hostname;
    auto ins = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      if (detail::VmExists(db, rec.id)) {
        return Status::AlreadyExists("vm_id: a VM with id '" + rec.id + "' exists already");
      }
      detail::InsertVm(db, rec, util::NowMillis());
      if (opts_.allocate_network) {
        auto st = AllocateAddress(db, rec.id, &net);
        if (!st.ok()) return st;
      }
      return Status::Ok();
    });
    if (!ins.ok()) return ins;
    rec.address = net.ip_cidr;
    rec.mac = net.mac;

    LaunchSpec spec;
    spec.vm_id = rec.id;
    spec.image = image;
    spec.work_dir = rec.work_dir;
    spec.network = net;
    if (net.index >= 0) {
      spec.network.egress = guest_net_.egress;
      spec.network.egress_allow = guest_net_.egress_allow;
      spec.network.dns = guest_net_.dns;
      spec.network.egress_deny = guest_net_.egress_deny;
      spec.network.ports = ports;
    }
    std::string owner = "vm:" + rec.id;
    spec.on_process_started = [this, owner](int pid) { internal::RecordProcess(store_, pid, "vm", owner); };
    spec.outlive_owner = true;  // live restore: a restart of this process does not end the VM
    return std::pair<VmRecord, LaunchSpec>(std::move(rec), std::move(spec));
  }

  // Steps 1-10 of the decision; on failure fills *failure and returns its Status.
  Result<std::unique_ptr<Vm>> TryWarm(std::chrono::milliseconds wait_for_creating, const RuntimeImage& image, Vmm& vmm,
                                      const LaunchSpec& spec, VmRecord& rec, Timings& timings,
                                      std::string* snapshot_id, WarmFailure* failure) {
    auto fail = [&](FallbackReason r, std::string msg) -> Status {
      *failure = {r, msg};
      return Status::Unavailable(std::move(msg));
    };
    auto t = Clock::now();
    // 1. Newest non-deleted snapshot.
    auto snaps = snapshots_.List(SnapshotFilter{image.id, std::nullopt, false});
    timings["lookup"] = util::MsSince(t);
    if (!snaps.ok()) return fail(FallbackReason::kNoSnapshot, "cannot list snapshots: " + snaps.status().message());
    if (snaps->empty()) return fail(FallbackReason::kNoSnapshot, "no runtime snapshot exists for image '" + image.name + "'");
    RuntimeSnapshot snap = snaps->front();
    *snapshot_id = snap.id;
    // 2. Wait while it is being built.
    if (snap.state == SnapshotState::kCreating) {
      t = Clock::now();
      auto waited = snapshots_.WaitWhileCreating(snap.id, wait_for_creating);
      timings["wait_creating"] = util::MsSince(t);
      if (!waited.ok()) return fail(FallbackReason::kNoSnapshot, waited.status().message());
      snap = *waited;
      if (snap.state == SnapshotState::kCreating) {
        return fail(FallbackReason::kSnapshotCreating, "runtime snapshot '" + snap.id + "' was still being built (phase " +
                                                           std::string(ToString(snap.phase)) + ") after the wait window");
      }
    }
    // 3. Health.
    if (snap.state == SnapshotState::kDeleted) return fail(FallbackReason::kNoSnapshot, "runtime snapshot was deleted");
    if (snap.state != SnapshotState::kReady) {
      return fail(FallbackReason::kSnapshotUnhealthy, "runtime snapshot '" + snap.id + "' is unhealthy: " + snap.last_error);
    }
    // 4. Compatibility key.
    t = Clock::now();
    auto key = snapshots_.CompatibilityKeyFor(image);
    timings["compatibility"] = util::MsSince(t);
    if (!key.ok() || key->first != snap.compatibility_key) {
      std::string why = key.ok() ? DescribeKeyDiff(snap.compatibility, key->second) : key.status().message();
      (void)health_.RecordIncompatible(snap.id, why);
      return fail(FallbackReason::kIncompatible, "runtime snapshot '" + snap.id + "' does not match this host: " + why);
    }
    // Pin the generation so a concurrent rebuild/delete cannot collect its files under us.
    auto pinned = snapshots_.PinGeneration(snap.id, rec.id);
    if (!pinned.ok()) return fail(FallbackReason::kSnapshotUnhealthy, pinned.status().message());
    util::ScopeGuard unpin([&] { Unpin(rec.id); });  // every failing exit below drops the pin
    snap = *pinned;
    // 5. Checksums.
    t = Clock::now();
    auto verified = VerifyFiles(snap);
    timings["verify_checksums"] = util::MsSince(t);
    if (!verified.ok()) {
      (void)health_.RecordFailure(snap.id, snap.generation, "corrupt: " + verified.message());
      return fail(FallbackReason::kCorrupt, "runtime snapshot '" + snap.id + "' is corrupt: " + verified.message());
    }
    // 6. Clone resources: a fresh, empty work directory.
    t = Clock::now();
    util::RemoveTree(spec.work_dir);
    if (auto st = util::MakeDirs(spec.work_dir); !st.ok()) {
      return fail(FallbackReason::kRestoreFailed, st.message());
    }
    timings["prepare"] = util::MsSince(t);
    // 7. Restore in a fresh VMM process.
    t = Clock::now();
    auto restored = vmm.Restore(spec, snap.generation_dir);
    timings["restore"] = util::MsSince(t);
    FCWARM_FAILPOINT_INTO("restore.warm.restore", restored);  // the clone runs (released on error)
    if (!restored.ok()) {
      // A full disk (the clone's overlay, its files) is not the snapshot's fault: it counts against no
      // health.
      if (restored.status().code() != StatusCode::kResourceExhausted) {
        (void)health_.RecordFailure(snap.id, snap.generation,
                                    "restore failed: " + restored.status().message());
      }
      CleanWorkDir(spec);
      return fail(FallbackReason::kRestoreFailed, restored.status().message());
    }
    std::unique_ptr<Vm> vm = std::move(restored).value();
    std::function<void(const std::string&, Vm&)> hook;
    {
      std::lock_guard lock(mu_);
      hook = after_restore_hook_;
    }
    if (hook) hook(rec.id, *vm);
    // 8. Identity, 9. runtime verification.
    auto verify = MakeUniqueAndVerify(vm, spec, image.runtime_check,
                                      {opts_.restore_agent_timeout, opts_.restore_runtime_timeout}, timings);
    if (!verify.ok()) {
      (void)health_.RecordFailure(snap.id, snap.generation, "verify failed: " + verify.message());
      return fail(FallbackReason::kVerifyFailed, verify.message());
    }
    // 10. Success.
    (void)health_.RecordSuccess(snap.id, snap.generation);
    unpin.Dismiss();
    return vm;
  }

  Result<std::unique_ptr<Vm>> ColdPath(const RuntimeImage& image, Vmm& vmm, const LaunchSpec& spec, Timings& timings) {
    util::RemoveTree(spec.work_dir);
    if (auto st = util::MakeDirs(spec.work_dir); !st.ok()) return st;
    auto t = Clock::now();
    auto booted = vmm.ColdBoot(spec);
    timings["cold_boot"] = util::MsSince(t);
    FCWARM_FAILPOINT_INTO("restore.cold.boot", booted);  // the VM runs (released on error)
    if (!booted.ok()) {
      CleanWorkDir(spec);
      return booted.status();
    }
    std::unique_ptr<Vm> vm = std::move(booted).value();
    auto st = MakeUniqueAndVerify(vm, spec, image.runtime_check,
                                  {opts_.cold_agent_timeout, opts_.cold_runtime_timeout}, timings);
    if (!st.ok()) return st;
    return vm;
  }

  struct VerifyDeadlines {
    std::chrono::milliseconds agent;
    std::chrono::milliseconds runtime;
  };

  // Steps 8 and 9 of either path: makes the started VM unique, then waits for its runtime check. On failure
  // the VM is discarded (stopped, its work directory emptied) and `vm` is null.
  Status MakeUniqueAndVerify(std::unique_ptr<Vm>& vm, const LaunchSpec& spec, const RuntimeCheck& check,
                             VerifyDeadlines deadlines, Timings& timings) {
    auto st = MakeUnique(*vm, spec, deadlines.agent, timings);
    if (st.ok()) {
      auto t = Clock::now();
      st = internal::WaitForRuntime(*vm, check, deadlines.runtime, opts_.poll_interval);
      timings["runtime_verify"] = util::MsSince(t);
    }
    if (!st.ok()) Discard(std::move(vm), spec);
    return st;
  }

  Status MakeUnique(Vm& vm, const LaunchSpec& spec, std::chrono::milliseconds agent_timeout, Timings& timings) {
    auto t = Clock::now();
    auto info = internal::WaitForAgent(vm, agent_timeout, opts_.poll_interval);
    timings["agent"] = util::MsSince(t);
    if (!info.ok()) return info.status();
    FCWARM_FAILPOINT("restore.identity");  // the agent answered, the VM is not unique yet
    t = Clock::now();
    // Resolvers and registry settings go to container runtime images only (docs/networking.md).
    IdentityRequest id = internal::IdentityFor(spec.network, guest_net_, spec.image.runtime_check.kind == "docker");
    auto r = vm.guest().SetIdentity(id, std::chrono::milliseconds(10000));
    timings["identity"] = util::MsSince(t);
    if (!r.ok()) return r.status().WithContext("identity");
    if (r->hostname != id.hostname) {
      return Status::Unavailable("identity: guest reports hostname '" + r->hostname + "', expected '" + id.hostname + "'");
    }
    return Status::Ok();
  }

  Status VerifyFiles(const RuntimeSnapshot& snap) {
    fs::path dir = snap.generation_dir;
    auto manifest = util::ReadFile(dir / "manifest.json", 1 << 20);
    if (!manifest.ok()) return Status::Unavailable("manifest.json is missing or unreadable");
    if (util::Xxh3Hex(*manifest) != snap.manifest_digest) return Status::Unavailable("manifest.json digest mismatch");
    bool full = false;
    if (opts_.full_verify_every > 0) {
      auto n = detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<int64_t> {
        return detail::CountRestoreSinceFullVerify(db, snap.id);
      });
      if (n.ok() && *n >= static_cast<int64_t>(opts_.full_verify_every)) {
        full = true;
        (void)detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::ResetFullVerifyCount(db, snap.id); });
      }
    }
    for (const auto& f : snap.files) {
      fs::path p = dir / f.name;
      std::error_code ec;
      auto size = fs::file_size(p, ec);
      if (ec) return Status::Unavailable(f.name + " is missing");
      if (size != f.size) {
        return Status::Unavailable(f.name + " has " + std::to_string(size) + " bytes, manifest says " + std::to_string(f.size));
      }
      if (full || util::MtimeNs(p) != f.mtime_ns) {
        auto d = util::Xxh3File(p);
        if (!d.ok()) return d.status();
        if (*d != f.xxh3) return Status::Unavailable(f.name + " checksum mismatch (xxh3 " + *d + ", manifest " + f.xxh3 + ")");
      }
    }
    return Status::Ok();
  }

  static std::string DescribeKeyDiff(const std::map<std::string, std::string>& was, const std::map<std::string, std::string>& now) {
    std::string out;
    for (const auto& [k, v] : now) {
      auto it = was.find(k);
      if (it == was.end() || it->second != v) {
        out += (out.empty() ? "" : ", ") + k + " '" + (it == was.end() ? "" : it->second) + "' -> '" + v + "'";
      }
    }
    for (const auto& [k, v] : was)
      if (!now.count(k)) out += (out.empty() ? "" : ", ") + k + " removed";
    return out.empty() ? "key differs" : out;
  }

  // The pool is shared with snapshot builds that pull (core/guest_network.hpp).
  Status AllocateAddress(SQLite::Database& db, const std::string& vm_id, NetworkIdentity* net) {
    return internal::AllocateAddress(db, pool_base_, opts_.address_pool_size, vm_id, net);
  }

  void Unpin(const std::string& vm_id) {
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::UnpinGeneration(db, vm_id); });
  }

  // Stops a VM that failed before it was handed out and leaves its work directory empty for the next attempt.
  void Discard(std::unique_ptr<Vm> vm, const LaunchSpec& spec) {
    (void)vm->Stop(opts_.stop_grace);
    vm.reset();
    internal::ForgetProcesses(store_, "vm:" + spec.vm_id);
    CleanWorkDir(spec);
  }

  void CleanWorkDir(const LaunchSpec& spec) {
    util::RemoveTree(spec.work_dir);
    (void)util::MakeDirs(spec.work_dir);
  }

  void SetState(const std::string& vm_id, VmState state, const std::string& error) {
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::SetVmState(db, vm_id, state, error, util::NowMillis()); });
  }

  void SetTimings(const std::string& vm_id, const Timings& t) {
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) { detail::SetVmTimings(db, vm_id, t); });
  }

  // Frees the address and work directory; the record keeps its history.
  void Release(const std::string& vm_id, VmState state, const std::string& error) {
    auto rec = Get(vm_id);
    if (rec.ok() && !rec->work_dir.empty() && fs::path(rec->work_dir).filename() == rec->instance_id &&
        util::IsWithin(opts_.vm_dir, rec->work_dir)) {
      util::RemoveTree(rec->work_dir);
    }
    (void)detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      detail::ReleaseAddress(db, vm_id);
      detail::SetVmState(db, vm_id, state, error, util::NowMillis());
      return Status::Ok();
    });
    internal::ForgetProcesses(store_, "vm:" + vm_id);
    (void)snapshots_.CollectGarbage();
  }

  void RememberColdBoot(const std::string& image_id, double ms) {
    std::lock_guard lock(mu_);
    auto& v = cold_boots_[image_id];
    v.push_back(ms);
    if (v.size() > 20) v.erase(v.begin());
  }

  // ---- live restore (docs/operations.md, "Restarts and live restore") --------------------------------------

  // The `running` VMs of the previous process (SnapshotManager's reconciliation left them): each is re-adopted
  // (its VMM process verified and reconnected, its host rules re-created, its guest answering with the
  // hostname it was given) or marked lost with everything it held released.
  void AdoptRunningVms() {
    std::vector<VmRecord> running;
    std::vector<detail::ProcessRecord> procs;
    (void)detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
      for (auto& vm : detail::LiveVms(db)) {
        if (vm.state == VmState::kRunning) running.push_back(std::move(vm));
      }
      procs = detail::RecordedProcesses(db);
      return Status::Ok();
    });
    for (const auto& rec : running) {
      const std::string instance = rec.instance_id.empty() ? rec.id : rec.instance_id;
      std::vector<AdoptTarget> targets;
      for (const auto& p : procs) {
        if (p.role == "vm" && (p.owner_id == "vm:" + rec.id || p.owner_id == "vm:" + instance)) {
          targets.push_back(AdoptTarget{p.pid, p.start_time});
        }
      }
      auto t = Clock::now();
      auto vm = AdoptOne(rec, instance, targets);
      Event e;
      e.kind = EventKind::kReconcile;
      e.runtime_image_id = rec.runtime_image_id;
      e.snapshot_id = rec.snapshot_id;
      e.vm_id = rec.id;
      e.timings["adopt"] = util::MsSince(t);
      if (vm.ok()) {
        {
          std::lock_guard lock(mu_);
          live_[rec.id] = *vm;
        }
        if (instance != rec.id) internal::ForgetProcesses(store_, "vm:" + instance);
        if (int pid = (*vm)->pid(); pid > 0) internal::RecordProcess(store_, pid, "vm", "vm:" + rec.id);
        adoption_.adopted++;
        e.outcome = "adopted";
        e.message = "re-adopted after a restart (VMM pid " + std::to_string((*vm)->pid()) + ")";
        spdlog::info("live restore: vm {} re-adopted (pid {}) in {:.0f} ms", rec.id, (*vm)->pid(),
                     e.timings["adopt"]);
      } else {
        LoseVm(rec, instance, targets, vm.status().message());
        adoption_.lost++;
        adoption_.lost_reasons[rec.id] = vm.status().message();
        e.outcome = "lost";
        e.reason = "not_adoptable";
        e.message = "lost after a restart: " + vm.status().message();
        spdlog::warn("live restore: vm {} is lost: {}", rec.id, vm.status().message());
      }
      internal::Emit(store_, e);
    }
    if (!running.empty()) {
      spdlog::info("live restore: {} VM(s) of the previous run re-adopted, {} lost", adoption_.adopted,
                   adoption_.lost);
    }
  }

  Result<std::shared_ptr<Vm>> AdoptOne(const VmRecord& rec, const std::string& instance,
                                       const std::vector<AdoptTarget>& targets) {
    if (targets.empty()) return Status::FailedPrecondition("no VMM process is recorded for it");
    if (rec.work_dir.empty() || !util::IsWithin(opts_.vm_dir, rec.work_dir)) {
      return Status::FailedPrecondition("its work directory '" + rec.work_dir + "' is not under " + opts_.vm_dir);
    }
    auto text = util::ReadFile(fs::path(rec.work_dir) / internal::kAdoptionRecordName, 1 << 20);
    if (!text.ok()) return Status::FailedPrecondition("no adoption record: " + text.status().message());
    auto record = internal::ParseAdoptionRecord(*text);
    if (!record.ok()) return record.status();
    if (record->instance_id != instance) {
      return Status::FailedPrecondition("its adoption record names vm '" + record->instance_id + "'");
    }
    auto image =
        detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ImageById(db, rec.runtime_image_id); });
    if (!image.ok()) return Status::FailedPrecondition("its runtime image is gone: " + image.status().message());
    auto vmm = vmms_.Find(record->backend);
    if (!vmm) return Status::FailedPrecondition("backend '" + record->backend + "' is not available");
    LaunchSpec spec;
    spec.vm_id = instance;
    spec.image = *image;
    spec.work_dir = rec.work_dir;
    spec.network = record->network;
    spec.outlive_owner = true;
    Status last = Status::FailedPrecondition("no VMM process is recorded for it");
    for (const auto& target : targets) {
      auto vm = vmm->Adopt(spec, target);
      if (!vm.ok()) {
        last = vm.status();
        continue;
      }
      std::shared_ptr<Vm> shared(std::move(vm).value());
      // The guest must answer on its channel, as the VM it was made: same hostname.
      auto info = shared->guest().Ping(opts_.restore_agent_timeout);
      if (!info.ok()) {
        (void)shared->Stop(std::chrono::milliseconds(0));
        return Status::Unavailable("its guest agent does not answer: " + info.status().message());
      }
      if (!rec.hostname.empty() && info->hostname != rec.hostname) {
        (void)shared->Stop(std::chrono::milliseconds(0));
        return Status::FailedPrecondition("its guest answers as '" + info->hostname + "', expected '" +
                                          rec.hostname + "'");
      }
      return shared;
    }
    return last;
  }

  // A running VM of the previous run that could not be adopted: its process (if it is still the recorded one)
  // is killed, its host networking removed, its address and work directory released; the record says why.
  void LoseVm(const VmRecord& rec, const std::string& instance, const std::vector<AdoptTarget>& targets,
              const std::string& why) {
    for (const auto& t : targets) {
      auto p = util::ForeignProcess::Open(t.pid, t.start_time);
      if (!p.ok()) continue;
      spdlog::warn("live restore: killing process {} of vm {}", t.pid, rec.id);
      (void)p->Signal(SIGKILL);
      (void)p->WaitExit(std::chrono::seconds(10));
    }
    const int64_t index =
        *detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<int64_t> { return detail::AddressIndexOf(db, rec.id); });
    if (auto swept = net::DeleteVmRules(net::IptablesOptions{}, {instance}); !swept.ok()) {
      spdlog::warn("live restore: cannot remove the rules of vm {}: {}", rec.id, swept.status().ToString());
    }
    for (const auto& kind : vmms_.Kinds()) {
      auto b = vmms_.Find(kind);
      auto* leftovers = dynamic_cast<HostLeftovers*>(b.get());
      if (!leftovers) continue;
      if (auto n = leftovers->RemoveVmLeftovers(instance, index); !n.ok()) {
        spdlog::warn("live restore: cannot remove the {} network devices of vm {}: {}", kind, rec.id,
                     n.status().ToString());
      }
    }
    internal::ForgetProcesses(store_, "vm:" + instance);
    if (!rec.work_dir.empty() && fs::path(rec.work_dir).filename() == instance &&
        util::IsWithin(opts_.vm_dir, rec.work_dir)) {
      util::RemoveTree(rec.work_dir);
    }
    Release(rec.id, VmState::kLost, "owner process restarted and the VM could not be re-adopted: " + why);
  }

  // ---- the clone pool (docs/architecture.md, "The clone pool") ----------------------------------------------

  void StartPool() {
    bool any = false;
    for (const auto& [ref, n] : opts_.pool) any = any || n > 0;
    if (!any) return;
    internal::ClonePool::Options po;
    po.targets = opts_.pool;
    po.idle_timeout = opts_.pool_idle_timeout;
    po.ping_timeout = std::min<std::chrono::milliseconds>(opts_.restore_agent_timeout, std::chrono::milliseconds(2000));
    internal::ClonePool::Hooks h;
    h.resolve = [this](const std::string& ref) { return ResolveImage(ref); };
    h.source = [this](const std::string& id) { return PoolSourceOf(id); };
    h.fill = [this](const std::string& id) { return FillClone(id); };
    h.destroy = [this](internal::PoolClone c, const std::string& reason) { DestroyClone(std::move(c), reason); };
    pool_ = std::make_unique<internal::ClonePool>(std::move(po), std::move(h));
    // A finished build may be the new source (or end a rebuild): look at once rather than at the next pass.
    build_listener_ = snapshots_.AddBuildListener([this](const BuildOutcome&) { pool_->Wake(); });
    pool_->Start();
  }

  Result<std::string> ResolveImage(const std::string& ref) const {
    auto img = detail::DbOf(store_).With([&](SQLite::Database& db) -> Result<RuntimeImage> {
      if (Id::IsValid(ref)) return detail::ImageById(db, ref);
      return detail::ImageByName(db, ref);
    });
    if (!img.ok()) {
      if (img.status().code() == StatusCode::kNotFound) {
        return Status::NotFound("no runtime image '" + ref + "' is registered (by id or name)");
      }
      return img.status();
    }
    return img->id;
  }

  // Clones must be of the image's newest non-deleted snapshot, while it is ready, at its current generation.
  internal::PoolSource PoolSourceOf(const std::string& image_id) const {
    internal::PoolSource src;
    auto snaps = snapshots_.List(SnapshotFilter{image_id, std::nullopt, false});
    if (!snaps.ok()) {
      src.not_ready = "unhealthy";
      return src;
    }
    if (snaps->empty()) {
      src.not_ready = "deleted";
      return src;
    }
    const RuntimeSnapshot& snap = snaps->front();
    switch (snap.state) {
      case SnapshotState::kReady:
        src.ready = true;
        src.snapshot_id = snap.id;
        src.generation = snap.generation;
        break;
      case SnapshotState::kCreating:
        src.not_ready = "rebuilt";
        break;
      case SnapshotState::kUnhealthy:
        src.not_ready = "unhealthy";
        break;
      case SnapshotState::kDeleted:
        src.not_ready = "deleted";
        break;
    }
    return src;
  }

  // Steps 1-9 of the warm path for a clone nobody asked for yet (no wait for a build: the pool only fills from
  // a ready snapshot). Its record ends `pooled`; a failed fill leaves a `destroyed` record with the error.
  Result<internal::PoolClone> FillClone(const std::string& image_id) {
    auto t_total = Clock::now();
    auto image =
        detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ImageById(db, image_id); });
    if (!image.ok()) return image.status();
    auto vmm = vmms_.Find(image->backend);
    if (!vmm) return Status::FailedPrecondition("backend '" + image->backend + "' is not available");
    auto created = NewVm(*image, "", "", {});
    if (!created.ok()) return created.status();
    VmRecord& rec = created->first;
    LaunchSpec& spec = created->second;
    Timings timings;
    std::string snapshot_id;
    WarmFailure failure{FallbackReason::kNone, ""};
    auto warm = TryWarm(std::chrono::milliseconds(0), *image, *vmm, spec, rec, timings, &snapshot_id, &failure);
    if (!warm.ok()) {
      std::string why = "pool fill failed (" + std::string(ToString(failure.reason)) + "): " + failure.message;
      SetTimings(rec.id, timings);
      Release(rec.id, VmState::kDestroyed, why);
      return Status::Unavailable(why);
    }
    timings["total"] = util::MsSince(t_total);
    if (auto w = internal::WriteAdoptionRecord(spec, vmm->Kind()); !w.ok()) {
      spdlog::warn("vm {}: no adoption record, a restart will lose it: {}", rec.id, w.ToString());
    }
    (void)detail::DbOf(store_).Do(
        [&](SQLite::Database& db) { detail::MarkVmPooled(db, rec.id, timings, util::NowMillis()); });
    internal::PoolClone c;
    c.vm_id = rec.id;
    c.image_id = image->id;
    c.snapshot_id = snapshot_id;
    if (auto now = Get(rec.id); now.ok()) c.generation = now->generation;
    c.vm = std::shared_ptr<Vm>(std::move(warm).value());
    c.timings = timings;
    c.ready = Clock::now();
    c.ready_at = util::NowMillis();
    spdlog::info("vm {} (image {}): pooled clone of snapshot {} restored and verified in {:.0f} ms", rec.id,
                 image->name, snapshot_id, timings["total"]);
    return c;
  }

  void DestroyClone(internal::PoolClone c, const std::string& reason) {
    if (c.vm) (void)c.vm->Stop(opts_.stop_grace);
    c.vm.reset();
    Release(c.vm_id, VmState::kDestroyed, reason == "shutdown" ? "" : "pool: discarded (" + reason + ")");
    // A record the store dropped with its image (ON DELETE CASCADE) no longer names the work directory.
    util::RemoveTree(fs::path(opts_.vm_dir) / c.vm_id);
  }

  // A request served by a pooled clone: one ping (ClonePool::Take), then the record takes the request's id and
  // name. nullopt: no clone was ready (the caller restores as usual).
  Result<std::optional<VmRecord>> TakeFromPool(const ProvisionRequest& req, const RuntimeImage& image,
                                               Clock::time_point t_total) {
    if (!req.vm_id.empty()) {
      auto free = detail::DbOf(store_).With([&](SQLite::Database& db) -> Status {
        if (detail::VmExists(db, req.vm_id)) {
          return Status::AlreadyExists("vm_id: a VM with id '" + req.vm_id + "' exists already");
        }
        return Status::Ok();
      });
      if (!free.ok()) return free;
    }
    Timings timings;
    auto clone = pool_->Take(image.id, timings);
    if (!clone) return std::optional<VmRecord>();
    const std::string id = req.vm_id.empty() ? clone->vm_id : req.vm_id;
    auto adopted = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      if (id != clone->vm_id && detail::VmExists(db, id)) {
        return Status::AlreadyExists("vm_id: a VM with id '" + id + "' exists already");
      }
      if (!detail::AdoptPooledVm(db, clone->vm_id, id, req.name, util::NowMillis())) {
        return Status::NotFound("the record of pooled vm '" + clone->vm_id + "' is gone");
      }
      return Status::Ok();
    });
    if (!adopted.ok()) {
      spdlog::warn("pool: cannot hand out clone {}: {}", clone->vm_id, adopted.ToString());
      DestroyClone(std::move(*clone), "adopt_failed");
      if (adopted.code() == StatusCode::kAlreadyExists) return adopted;
      return std::optional<VmRecord>();
    }
    timings["total"] = util::MsSince(t_total);
    {
      std::lock_guard lock(mu_);
      live_[id] = clone->vm;
    }
    (void)detail::DbOf(store_).Do([&](SQLite::Database& db) {
      detail::MarkVmRunning(db, id, BootMethod::kWarm, FallbackReason::kNone, timings, util::NowMillis());
    });
    double waited_ms = static_cast<double>(util::NowMillis() - clone->ready_at);
    Event e;
    e.kind = EventKind::kBoot;
    e.runtime_image_id = image.id;
    e.snapshot_id = clone->snapshot_id;
    e.vm_id = id;
    e.outcome = std::string(ToString(BootMethod::kWarm));
    e.timings = timings;
    e.message = "warm from the clone pool (clone " + clone->vm_id + " restored in " +
                std::to_string(static_cast<int64_t>(clone->timings["total"])) + " ms, pooled for " +
                std::to_string(static_cast<int64_t>(waited_ms / 1000)) + " s)";
    internal::Emit(store_, e);
    spdlog::info("vm {} (image {}): warm from the pool in {:.0f} ms ({})", id, image.name, timings["total"],
                 e.message);
    auto out = Get(id);
    if (!out.ok()) return out.status();
    return std::optional<VmRecord>(std::move(out).value());
  }

  AdoptionReport adoption_;
  Store& store_;
  VmmRegistry& vmms_;
  SnapshotManager& snapshots_;
  HealthTracker& health_;
  RestoreOptions opts_;
  internal::GuestNetwork guest_net_;  // egress, resolvers and registry settings for every VM
  uint32_t pool_base_ = 0x0AD50000;  // 10.213.0.0
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Vm>> live_;
  std::map<std::string, std::vector<double>> cold_boots_;
  std::function<void(const std::string&, Vm&)> after_restore_hook_;
  int build_listener_ = -1;
  std::unique_ptr<internal::ClonePool> pool_;  // null without a pool; last: stopped first
};

RestoreEngine::RestoreEngine(Store& store, VmmRegistry& vmms, SnapshotManager& snapshots, HealthTracker& health,
                             RestoreOptions options)
    : impl_(std::make_unique<Impl>(store, vmms, snapshots, health, std::move(options))) {}
RestoreEngine::~RestoreEngine() = default;

Result<VmRecord> RestoreEngine::Provision(const ProvisionRequest& request) { return impl_->Provision(request); }
Status RestoreEngine::Stop(const std::string& id) { return impl_->Stop(id); }
Status RestoreEngine::Destroy(const std::string& id) { return impl_->Destroy(id); }
Status RestoreEngine::Fail(const std::string& id, const std::string& reason) { return impl_->Fail(id, reason); }
Result<VmRecord> RestoreEngine::Get(const std::string& id) const { return impl_->Get(id); }
std::chrono::milliseconds RestoreEngine::ProvisionDeadline() const {
  // Each path: its agent deadline, the identity exchange, its runtime deadline, and the VMM's own operation
  // (a restore or a boot, bounded by the backend's timeouts) within kVmmAllowance.
  constexpr std::chrono::milliseconds kIdentity{10000};
  constexpr std::chrono::milliseconds kVmmAllowance{120000};
  const auto& o = impl_->options();
  return o.wait_for_creating + (o.restore_agent_timeout + kIdentity + o.restore_runtime_timeout + kVmmAllowance) +
         (o.cold_agent_timeout + kIdentity + o.cold_runtime_timeout + kVmmAllowance);
}
Result<std::vector<VmRecord>> RestoreEngine::List(bool d) const { return impl_->List(d); }
Result<std::shared_ptr<Vm>> RestoreEngine::Handle(const std::string& id) const { return impl_->Handle(id); }
std::optional<double> RestoreEngine::MeasuredColdBootMs(const std::string& id) const {
  return impl_->MeasuredColdBootMs(id);
}
const RestoreOptions& RestoreEngine::options() const { return impl_->options(); }
const AdoptionReport& RestoreEngine::adoption_report() const { return impl_->adoption_report(); }
std::vector<PoolStatus> RestoreEngine::Pool() const { return impl_->Pool(); }
Status RestoreEngine::CheckPool() const { return impl_->CheckPool(); }
void RestoreEngine::SetAfterRestoreHook(std::function<void(const std::string&, Vm&)> hook) {
  impl_->SetAfterRestoreHook(std::move(hook));
}

}  // namespace fcwarm
