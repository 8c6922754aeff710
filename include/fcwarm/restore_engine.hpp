/// \file
/// \brief RestoreEngine: "give me a ready VM of image X" — warm when possible, cold otherwise.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fcwarm/health_tracker.hpp"
#include "fcwarm/options.hpp"
#include "fcwarm/snapshot_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief A request for a ready VM.
struct ProvisionRequest {
  std::string runtime_image_id;  ///< The image (required).
  /// \brief Id for the new VM record (UUID v4 text), or empty to generate one. Lets a caller (e.g. the server)
  /// know the id before the call returns. A malformed id is InvalidArgument, a used one AlreadyExists.
  std::string vm_id;
  std::string name;              ///< Optional name (validated like image names).
  /// \brief Overrides RestoreOptions::wait_for_creating for this request.
  std::optional<std::chrono::milliseconds> wait_for_creating;
  /// \brief Skip the warm path (forces a cold boot; reason recorded as no_snapshot). Default: false.
  bool force_cold = false;
  /// \brief Host ports to forward to the VM while it runs, each "HOST_IP:HOST_PORT:GUEST_PORT/PROTO" with every
  /// part set (NetworkIdentity::ports); InvalidArgument naming the entry otherwise. The caller checks that the
  /// host ports are free (ContainerManager does, before anything starts). Needs a network identity
  /// (RestoreOptions::allocate_network).
  std::vector<std::string> ports;
};

/// \brief One clone waiting in the pool.
struct PooledClone {
  std::string vm_id;        ///< Its VM record (state `pooled`).
  std::string snapshot_id;  ///< Snapshot it was restored from.
  int64_t generation = 0;   ///< Generation it maps.
  int64_t ready_at = 0;     ///< When it joined the pool, Unix milliseconds.
  int pid = -1;             ///< Its VMM process.
  /// \brief Proportional set size of its VMM process in bytes (Linux /proc/PID/smaps_rollup `Pss`: pages
  /// shared with other clones of the snapshot count by share), or nullopt when unreadable.
  std::optional<uint64_t> pss_bytes;
};

/// \brief The pool of one configured image (RestoreOptions::pool).
struct PoolStatus {
  std::string image;             ///< The image as configured (id or name).
  std::string runtime_image_id;  ///< What it resolves to, or empty when it resolves to nothing (yet).
  unsigned target = 0;           ///< Clones to keep ready.
  std::vector<PooledClone> clones;  ///< Clones ready to be taken, oldest first.
  bool filling = false;          ///< True while a clone of it is being restored.
  int64_t filled = 0;            ///< Clones restored into the pool so far.
  int64_t taken = 0;             ///< Clones handed to requests so far.
  int64_t misses = 0;            ///< Requests for the image that found no ready clone (they restored as usual).
  /// \brief Clones destroyed without being handed out, by reason: `rebuilt` (their snapshot was rebuilt or a
  /// newer one replaced it), `deleted`, `unhealthy`, `idle` (RestoreOptions::pool_idle_timeout), `dead` (the VMM
  /// process died or the agent did not answer the take's ping), `image_removed`.
  std::map<std::string, int64_t> discarded;
  std::string last_error;        ///< Why the last fill failed (or the image does not resolve), or empty.
};

/// \brief What the engine did at startup with the running VMs of a previous process on the same store (live
/// restore, docs/operations.md "Restarts and live restore").
struct AdoptionReport {
  int adopted = 0;  ///< VMs re-adopted: their VMM process, control and guest channels answered; still running.
  int lost = 0;     ///< VMs that could not be (process gone, guest silent, ...): marked `lost`, resources released.
  std::map<std::string, std::string> lost_reasons;  ///< VM id → why it could not be adopted.
};

/// \brief Implements the warm-boot decision (DESIGN §4): find the newest snapshot, wait while it is being
/// built, check health and compatibility, verify checksums, restore in a fresh VMM process, make the clone
/// unique, verify the runtime; on any failure destroy the clone, record the failure and boot cold. Every
/// decision is written to the event log and the log.
///
/// With RestoreOptions::pool, the engine keeps clones of each pooled image's ready snapshot restored and
/// verified on a background thread (state `pooled`); Provision() hands one out after one agent ping instead of
/// restoring (docs/architecture.md, "The clone pool").
///
/// Thread safety: safe for concurrent use; any number of Provision() calls may run at once.
class RestoreEngine {
 public:
  /// \brief Creates the engine, first re-adopting the `running` VMs a previous process on the same store left
  /// (see AdoptionReport; SnapshotManagerOptions::leave_running_vms must have kept them).
  /// \param store Store; must outlive the engine.
  /// \param vmms Backends; must outlive the engine.
  /// \param snapshots Snapshot manager; must outlive the engine.
  /// \param health Health tracker; must outlive the engine.
  /// \param options Options.
  RestoreEngine(Store& store, VmmRegistry& vmms, SnapshotManager& snapshots, HealthTracker& health,
                RestoreOptions options);
  /// \brief Destroys pooled clones; stops every other VM this engine runs, or with
  /// RestoreOptions::stop_vms_on_exit false leaves them running for the next engine to adopt.
  ~RestoreEngine();
  RestoreEngine(const RestoreEngine&) = delete;
  RestoreEngine& operator=(const RestoreEngine&) = delete;

  /// \brief Returns a running, verified VM with boot_method, fallback_reason and timings. When the image has a
  /// pooled clone ready and the request neither forces a cold boot nor publishes ports, the VM is that clone
  /// (VmRecord::pooled; timings `pool_take` and `agent`, no `restore`), its record re-keyed to `vm_id`.
  /// \param request What to start.
  /// \return The VM record; InvalidArgument/NotFound for a bad image; Unavailable when even the cold boot
  /// failed (the VM record then has state `failed`).
  Result<VmRecord> Provision(const ProvisionRequest& request);
  /// \brief Stops a VM (keeps its record and work directory).
  /// \param vm_id The VM.
  /// \return Ok; InvalidArgument; NotFound.
  Status Stop(const std::string& vm_id);
  /// \brief Stops a VM and releases everything: process, work directory, address, generation pin.
  /// \param vm_id The VM.
  /// \return Ok; InvalidArgument; NotFound.
  Status Destroy(const std::string& vm_id);
  /// \brief Fails a VM whose guest cannot be trusted any more: a call on its agent channel returned DataLoss
  /// (a protocol violation, docs/guest-protocol.md, "Limits"). Its VMM is stopped, its work directory, address
  /// and generation pin released, and its record becomes `failed` with `reason` as its last error (kept when
  /// the VM is destroyed later). A VM that is failed or destroyed already is left as it is.
  /// \param vm_id The VM.
  /// \param reason Why, e.g. the DataLoss message naming the violation.
  /// \return Ok; InvalidArgument; NotFound; FailedPrecondition for a pooled VM (the pool owns it).
  Status Fail(const std::string& vm_id, const std::string& reason);
  /// \brief Gets a VM record.
  /// \param vm_id The VM.
  /// \return The record; InvalidArgument; NotFound.
  Result<VmRecord> Get(const std::string& vm_id) const;
  /// \brief Lists VM records, newest first.
  /// \param include_destroyed Include destroyed VMs.
  Result<std::vector<VmRecord>> List(bool include_destroyed) const;
  /// \brief The live VM handle (for guest access), or NotFound when it is not running in this process.
  /// \param vm_id The VM.
  Result<std::shared_ptr<Vm>> Handle(const std::string& vm_id) const;
  /// \brief Mean cold-boot-to-ready time of recent cold boots of an image, in ms (for "time saved"); before
  /// the first cold boot of a VM, the mean boot-to-runtime-ready time of its snapshot builds (a build VM boots
  /// cold and waits for the runtime).
  /// \param runtime_image_id The image.
  /// \return The mean, or nullopt when neither was measured yet.
  std::optional<double> MeasuredColdBootMs(const std::string& runtime_image_id) const;
  /// \brief Installs a hook called on the provisioning thread right after a warm clone was restored and
  /// before its identity refresh and runtime verification (fault injection in tests, diagnostics). A hook
  /// must not destroy the VM; it may use its guest channel. Empty function: no hook.
  /// \param hook Called with the VM id and the restored VM.
  void SetAfterRestoreHook(std::function<void(const std::string& vm_id, Vm& vm)> hook);
  /// \brief An upper bound of how long Provision() can take before it returns a VM or its own error: the
  /// wait for a building snapshot, the warm path's and the cold path's deadlines, plus an allowance for the VMM
  /// process operations. Clients that wait on a provisioning request derive their deadline from it.
  std::chrono::milliseconds ProvisionDeadline() const;
  /// \brief The clone pool, one entry per configured image (RestoreOptions::pool, sizes 0 included); empty
  /// without a pool.
  std::vector<PoolStatus> Pool() const;
  /// \brief Checks that every image of RestoreOptions::pool resolves to a registered runtime image (call it
  /// once the images are registered; the pool itself keeps retrying names that do not resolve).
  /// \return Ok; NotFound naming the first image that resolves to nothing.
  Status CheckPool() const;
  /// \brief The options in force.
  const RestoreOptions& options() const;
  /// \brief What startup did with the previous process's running VMs.
  const AdoptionReport& adoption_report() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcwarm
