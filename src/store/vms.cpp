#include "store/vms.hpp"

#include "store/sql.hpp"
#include "util/common.hpp"

namespace fcwarm::detail {
namespace {

const RowMap<VmRecord>& VmRows() {
  static const RowMap<VmRecord> kRows{
      Col("id", &VmRecord::id),
      Col("name", &VmRecord::name),
      Col("runtime_image_id", &VmRecord::runtime_image_id),
      Col("snapshot_id", &VmRecord::snapshot_id),
      Col("generation", &VmRecord::generation),
      Col("state", &VmRecord::state),
      Col("boot_method", &VmRecord::boot_method),
      Col("fallback_reason", &VmRecord::fallback_reason),
      Col("timings", &VmRecord::timings),
      Col("work_dir", &VmRecord::work_dir),
      Col("address", &VmRecord::address),
      Col("mac", &VmRecord::mac),
      Col("hostname", &VmRecord::hostname),
      Col("last_error", &VmRecord::last_error),
      Col("pooled", &VmRecord::pooled),
      Col("CASE WHEN instance_id = '' THEN id ELSE instance_id END AS instance_id", &VmRecord::instance_id),
      Col("created_at", &VmRecord::created_at),
      Col("updated_at", &VmRecord::updated_at),
  };
  return kRows;
}

const RowMap<ProcessRecord>& ProcessRows() {
  static const RowMap<ProcessRecord> kRows{
      Col("pid", &ProcessRecord::pid),
      Col("start_time", &ProcessRecord::start_time),
      Col("role", &ProcessRecord::role),
      Col("owner_id", &ProcessRecord::owner_id),
  };
  return kRows;
}

}  // namespace

// ---- vms ----------------------------------------------------------------------

Result<VmRecord> VmById(SQLite::Database& db, const std::string& id) {
  auto vm = VmRows().One(db, "FROM vms WHERE id = ?", id);
  if (!vm) return Status::NotFound("vm '" + id + "' not found");
  return *vm;
}

std::vector<VmRecord> ListVms(SQLite::Database& db, bool include_destroyed) {
  if (include_destroyed) return VmRows().All(db, "FROM vms ORDER BY created_at DESC, rowid DESC");
  return VmRows().All(db, "FROM vms WHERE state != ? ORDER BY created_at DESC, rowid DESC",
                      VmState::kDestroyed);
}

Result<VmRecord> VmByInstanceId(SQLite::Database& db, const std::string& instance_id) {
  auto vm = VmRows().One(db, "FROM vms WHERE id = ?1 OR instance_id = ?1 ORDER BY (id = ?1) DESC LIMIT 1",
                         instance_id);
  if (!vm) return Status::NotFound("vm '" + instance_id + "' not found");
  return *vm;
}

std::vector<VmRecord> LiveVms(SQLite::Database& db) {
  return VmRows().All(db, "FROM vms WHERE state IN (?,?,?,?)", VmState::kStarting, VmState::kRunning,
                      VmState::kStopped, VmState::kPooled);
}

int64_t CountLiveVms(SQLite::Database& db, const std::string& image_id) {
  return *QueryInt(db, "SELECT COUNT(*) AS n FROM vms WHERE runtime_image_id = ? AND state IN (?,?,?,?)", "n",
                   image_id, VmState::kStarting, VmState::kRunning, VmState::kStopped, VmState::kPooled);
}

bool VmExists(SQLite::Database& db, const std::string& id) {
  return Exists(db, "SELECT 1 FROM vms WHERE id = ?", id);
}

bool AnyVm(SQLite::Database& db) { return Exists(db, "SELECT 1 FROM vms LIMIT 1"); }

bool IsLiveState(VmState state) {
  return state == VmState::kStarting || state == VmState::kRunning || state == VmState::kStopped ||
         state == VmState::kPooled;
}

void InsertVm(SQLite::Database& db, const VmRecord& rec, int64_t now) {
  Exec(db,
       "INSERT INTO vms(id, name, runtime_image_id, state, boot_method, work_dir, hostname, instance_id, "
       "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
       rec.id, rec.name, rec.runtime_image_id, VmState::kStarting, BootMethod::kCold, rec.work_dir,
       rec.hostname, rec.id, now, now);
}

void MarkVmPooled(SQLite::Database& db, const std::string& id, const Timings& timings, int64_t now) {
  Exec(db, "UPDATE vms SET state = ?, boot_method = ?, fallback_reason = '', timings = ?, updated_at = ? WHERE id = ?",
       VmState::kPooled, BootMethod::kWarm, util::TimingsToJson(timings), now, id);
}

bool AdoptPooledVm(SQLite::Database& db, const std::string& pooled_id, const std::string& new_id,
                   const std::string& name, int64_t now) {
  int n = Exec(db,
               "UPDATE vms SET id = ?, name = ?, state = ?, pooled = 1, instance_id = CASE WHEN instance_id = '' "
               "THEN id ELSE instance_id END, created_at = ?, updated_at = ? WHERE id = ? AND state = ?",
               new_id, name, VmState::kStarting, now, now, pooled_id, VmState::kPooled);
  if (n != 1) return false;
  if (new_id != pooled_id) {
    Exec(db, "UPDATE address_allocations SET vm_id = ? WHERE vm_id = ?", new_id, pooled_id);
    Exec(db, "UPDATE processes SET owner_id = ? WHERE owner_id = ?", "vm:" + new_id, "vm:" + pooled_id);
  }
  return true;
}

void MarkVmRunning(SQLite::Database& db, const std::string& id, BootMethod method, FallbackReason reason,
                   const Timings& timings, int64_t now) {
  Exec(db,
       "UPDATE vms SET state = ?, boot_method = ?, fallback_reason = ?, timings = ?, updated_at = ? WHERE id "
       "= ?",
       VmState::kRunning, method, reason, util::TimingsToJson(timings), now, id);
}

void SetVmState(SQLite::Database& db, const std::string& id, VmState state, const std::string& error,
                int64_t now) {
  Exec(db, "UPDATE vms SET state = ?, last_error = ?, updated_at = ? WHERE id = ?", state, error, now, id);
}

void SetVmTimings(SQLite::Database& db, const std::string& id, const Timings& timings) {
  Exec(db, "UPDATE vms SET timings = ? WHERE id = ?", util::TimingsToJson(timings), id);
}

bool PinGeneration(SQLite::Database& db, const std::string& vm_id, const std::string& snapshot_id,
                   int64_t generation, int64_t now) {
  return Exec(db, "UPDATE vms SET snapshot_id = ?, generation = ?, updated_at = ? WHERE id = ?", snapshot_id,
              generation, now, vm_id) == 1;
}

void UnpinGeneration(SQLite::Database& db, const std::string& vm_id) {
  Exec(db, "UPDATE vms SET snapshot_id = '', generation = 0 WHERE id = ?", vm_id);
}

// ---- address allocations ------------------------------------------------------

int64_t LowestFreeAddressIndex(SQLite::Database& db) {
  SQLite::Statement q(db, "SELECT idx FROM address_allocations ORDER BY idx");
  int64_t idx = 0;
  while (q.executeStep() && q.getColumn("idx").getInt64() == idx) ++idx;
  return idx;
}

void AllocateAddress(SQLite::Database& db, int64_t index, const std::string& vm_id, const std::string& mac,
                     const std::string& ip_cidr, int64_t now) {
  Exec(db, "INSERT INTO address_allocations(idx, vm_id, mac, ip_cidr, allocated_at) VALUES (?,?,?,?,?)",
       index, vm_id, mac, ip_cidr, now);
  Exec(db, "UPDATE vms SET address = ?, mac = ? WHERE id = ?", ip_cidr, mac, vm_id);
}

int64_t AddressIndexOf(SQLite::Database& db, const std::string& vm_id) {
  SQLite::Statement q(db, "SELECT idx FROM address_allocations WHERE vm_id = ?");
  q.bind(1, vm_id);
  return q.executeStep() ? q.getColumn("idx").getInt64() : -1;
}

void ReleaseAddress(SQLite::Database& db, const std::string& vm_id) {
  Exec(db, "DELETE FROM address_allocations WHERE vm_id = ?", vm_id);
}

int ReleaseAddressesWithPrefix(SQLite::Database& db, const std::string& prefix) {
  return Exec(db, "DELETE FROM address_allocations WHERE substr(vm_id, 1, length(?1)) = ?1", prefix);
}

// ---- processes ----------------------------------------------------------------

void RecordProcess(SQLite::Database& db, const ProcessRecord& p, int64_t now) {
  Exec(db, "INSERT OR REPLACE INTO processes(pid, start_time, role, owner_id, created_at) VALUES (?,?,?,?,?)",
       p.pid, p.start_time, p.role, p.owner_id, now);
}

std::vector<ProcessRecord> RecordedProcesses(SQLite::Database& db) {
  return ProcessRows().All(db, "FROM processes");
}

void ForgetProcesses(SQLite::Database& db, const std::string& owner_id) {
  Exec(db, "DELETE FROM processes WHERE owner_id = ?", owner_id);
}

void ForgetAllProcesses(SQLite::Database& db) { Exec(db, "DELETE FROM processes"); }

}  // namespace fcwarm::detail
