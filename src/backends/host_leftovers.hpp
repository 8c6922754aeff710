// Private: what a backend can remove of a VM whose owner process died (SnapshotManager's startup
// reconciliation, docs/networking.md "Cleanup and crash recovery"). Not part of the Vmm interface on purpose:
// only backends whose per-VM host devices are named from the VM id or its allocation index implement it, and
// the core finds them with dynamic_cast.
#pragma once

#include <cstdint>
#include <string>

#include "fcwarm/status.hpp"

namespace fcwarm {

/// Removes the host-side network devices a backend creates for one VM, when a crash left them behind.
/// Thread safety: safe to call concurrently with anything but a VM of the same id or index being started.
class HostLeftovers {
 public:
  virtual ~HostLeftovers() = default;
  /// Deletes the network namespace, veth or TAP the VM `vm_id` with allocation index `index` (-1: none) had,
  /// where they still exist. Returns how many were deleted; the `ip` error when one could not be.
  virtual Result<int> RemoveVmLeftovers(const std::string& vm_id, int64_t index) = 0;
};

}  // namespace fcwarm
