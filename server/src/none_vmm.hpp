// The "none" backend: lets the API run without a hypervisor (images can be registered, every VM start fails
// with Unavailable). Used by `--backend none` and by the server tests; it is not a test double — it behaves
// like a host without a VMM.
#pragma once

#include <chrono>
#include <memory>

#include "fcwarm/vmm.hpp"

namespace fcwarm::server {

/// A backend of Kind() "none" whose ColdBoot/Restore fail with Unavailable after `delay` (a simulated boot
/// time, so clients can be tried against slow provisioning; default 0).
std::unique_ptr<Vmm> MakeNoneVmm(std::chrono::milliseconds delay = std::chrono::milliseconds(0));

}  // namespace fcwarm::server
