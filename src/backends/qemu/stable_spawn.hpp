// Private: util::Spawn() performed on one long-lived thread.
//
// PR_SET_PDEATHSIG (SpawnOptions::die_with_parent) fires when the *thread* that forked the child exits, not
// when the process exits. A VMM started from a short-lived thread (std::async, a worker pool that shrinks)
// would be SIGKILLed as soon as that thread ends. Forking from one thread that lives as long as the process
// keeps the intended meaning: the child dies with the process.
#pragma once

#include "fcwarm/status.hpp"
#include "util/process.hpp"

namespace fcwarm::qemu {

/// Same contract as util::Spawn(); the fork happens on a process-lifetime thread.
Result<util::Child> SpawnOnStableThread(const util::SpawnOptions& opts);

}  // namespace fcwarm::qemu
