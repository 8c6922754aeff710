// Private: the adoption record of a running VM (docs/operations.md, "Restarts and live restore").
//
// RestoreEngine writes `<work dir>/fcwarm-vm.json` once a VM runs: what a later process needs, besides the
// store's records, to re-adopt the VM after a restart (Vmm::Adopt): the launch spec's network identity (the
// host rules of its egress policy and published ports are re-created from it) and the backend it runs on.
// The file lives and dies with the VM's work directory.
#pragma once

#include <string>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::internal {

/// File name of the adoption record in a VM's work directory.
inline constexpr const char* kAdoptionRecordName = "fcwarm-vm.json";

/// What the record holds.
struct AdoptionRecord {
  std::string instance_id;  // the id the VM's host resources are named after (LaunchSpec::vm_id)
  std::string backend;      // Vmm::Kind() it was started with
  NetworkIdentity network;  // LaunchSpec::network as it was started
};

/// The record's JSON text.
std::string AdoptionRecordJson(const AdoptionRecord& record);

/// Parses a record. InvalidArgument naming the field that is missing or malformed.
Result<AdoptionRecord> ParseAdoptionRecord(const std::string& text);

/// Writes `<spec.work_dir>/fcwarm-vm.json` for a VM started from `spec` on `backend` (durably: renamed into
/// place after fsync).
Status WriteAdoptionRecord(const LaunchSpec& spec, const std::string& backend);

}  // namespace fcwarm::internal
