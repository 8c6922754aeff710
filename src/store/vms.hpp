// Private: typed access to the `vms`, `address_allocations` and `processes` tables. Caller holds the lock
// (StoreDb::With/Tx).
#pragma once

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::detail {

// ---- vms ----------------------------------------------------------------------

/// The VM with this id; NotFound.
Result<VmRecord> VmById(SQLite::Database& db, const std::string& id);
/// VMs newest first, destroyed ones only when asked.
std::vector<VmRecord> ListVms(SQLite::Database& db, bool include_destroyed);
/// The VM whose id or instance id (the id its host resources are named after) is `instance_id`; NotFound.
Result<VmRecord> VmByInstanceId(SQLite::Database& db, const std::string& instance_id);
/// VMs that may still hold resources: starting, running, stopped or pooled.
std::vector<VmRecord> LiveVms(SQLite::Database& db);
/// Live VMs (see LiveVms()) of an image.
int64_t CountLiveVms(SQLite::Database& db, const std::string& image_id);
/// True when a VM has this id.
bool VmExists(SQLite::Database& db, const std::string& id);
/// True when any VM record exists (destroyed ones included).
bool AnyVm(SQLite::Database& db);
/// True for the states in which a VM may still hold resources (LiveVms()).
bool IsLiveState(VmState state);
/// Inserts a new VM record: `starting`, `cold`, with `rec`'s id, name, image, work directory and hostname.
void InsertVm(SQLite::Database& db, const VmRecord& rec, int64_t now);
/// Records a restored, verified clone as `pooled` (warm) with its fill timings.
void MarkVmPooled(SQLite::Database& db, const std::string& id, const Timings& timings, int64_t now);
/// Hands a `pooled` VM to a request: the record takes `new_id` (may equal `pooled_id`) and `name`, state
/// `starting`, pooled = 1; its address allocation and process records follow the id; its instance id keeps the
/// id the clone was restored under. False when no `pooled` VM has `pooled_id`.
bool AdoptPooledVm(SQLite::Database& db, const std::string& pooled_id, const std::string& new_id,
                   const std::string& name, int64_t now);
/// Records a VM as running, with how it booted and its timings.
void MarkVmRunning(SQLite::Database& db, const std::string& id, BootMethod method, FallbackReason reason,
                   const Timings& timings, int64_t now);
/// Sets a VM's state and last error.
void SetVmState(SQLite::Database& db, const std::string& id, VmState state, const std::string& error,
                int64_t now);
/// Sets a VM's timings.
void SetVmTimings(SQLite::Database& db, const std::string& id, const Timings& timings);
/// Pins a snapshot generation for a VM; false when the VM does not exist.
bool PinGeneration(SQLite::Database& db, const std::string& vm_id, const std::string& snapshot_id,
                   int64_t generation, int64_t now);
/// Drops a VM's generation pin.
void UnpinGeneration(SQLite::Database& db, const std::string& vm_id);

// ---- address allocations ------------------------------------------------------

/// The lowest allocation index no VM holds.
int64_t LowestFreeAddressIndex(SQLite::Database& db);
/// Allocates index `index` (with its MAC and address) to a VM and records them on the VM.
void AllocateAddress(SQLite::Database& db, int64_t index, const std::string& vm_id, const std::string& mac,
                     const std::string& ip_cidr, int64_t now);
/// The allocation index a VM holds, or -1.
int64_t AddressIndexOf(SQLite::Database& db, const std::string& vm_id);
/// Frees a VM's address allocation.
void ReleaseAddress(SQLite::Database& db, const std::string& vm_id);
/// Frees every allocation whose holder starts with `prefix` (e.g. "build:", the build VMs of a previous run);
/// returns how many.
int ReleaseAddressesWithPrefix(SQLite::Database& db, const std::string& prefix);

// ---- processes ----------------------------------------------------------------

/// A host process started for a VM or a build, recorded so a later run can kill it after a crash.
struct ProcessRecord {
  int pid = 0;
  uint64_t start_time = 0;  ///< From /proc/<pid>/stat: tells a reused pid apart.
  std::string role;
  std::string owner_id;
};
/// Records (or replaces) a process.
void RecordProcess(SQLite::Database& db, const ProcessRecord& p, int64_t now);
/// Every recorded process.
std::vector<ProcessRecord> RecordedProcesses(SQLite::Database& db);
/// Forgets the processes of one owner.
void ForgetProcesses(SQLite::Database& db, const std::string& owner_id);
/// Forgets every recorded process.
void ForgetAllProcesses(SQLite::Database& db);

}  // namespace fcwarm::detail
