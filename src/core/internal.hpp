// Private helpers shared by the core classes.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::internal {

/// Where the docker runtime image has the parked containers' launcher (guest/launcher/fcwarm-launch.c).
inline constexpr std::string_view kGuestLauncher = "/usr/lib/fcwarm/fcwarm-launch";
/// Parent of the parked containers' launch channels in the guest (the agent's `launch` op accepts only these).
inline constexpr std::string_view kParkedChannels = "/run/fcwarm/parked/";

/// Records a VMM process so a later run can kill it if this one crashes.
void RecordProcess(Store& store, int pid, const std::string& role, const std::string& owner_id);
/// Forgets the processes recorded for an owner (after they were stopped).
void ForgetProcesses(Store& store, const std::string& owner_id);

/// Appends an event and logs it; never fails the caller (errors are logged).
void Emit(Store& store, const Event& event);

/// Returns true when a wait should give up early (e.g. shutdown). May be empty.
using CancelFn = std::function<bool()>;

/// Polls the guest until the agent answers `ping`, at most `timeout`. Fails fast when the VMM process died;
/// Unavailable("cancelled") as soon as `cancelled()` is true.
Result<GuestInfo> WaitForAgent(Vm& vm, std::chrono::milliseconds timeout, std::chrono::milliseconds poll,
                               const CancelFn& cancelled = {});
/// Polls the runtime check until it passes, at most `timeout`. Fails fast when the VMM process died;
/// Unavailable("cancelled") as soon as `cancelled()` is true.
Status WaitForRuntime(Vm& vm, const RuntimeCheck& check, std::chrono::milliseconds timeout,
                      std::chrono::milliseconds poll, const CancelFn& cancelled = {});

/// Random bytes from the kernel (getrandom).
std::string RandomBytes(size_t n);

/// Most container images one preload list (a runtime image's, or the service-wide one) may name.
inline constexpr size_t kMaxPreloadImages = 32;
/// Checks a preload list: at most kMaxPreloadImages Docker references, each once (compared normalized:
/// "nginx:alpine" and "docker.io/library/nginx:alpine" are the same image). \return The references in canonical
/// spelling; InvalidArgument naming `preload_images` or the entry `preload_images[i]`.
Result<std::vector<std::string>> CheckPreloadList(const std::vector<std::string>& refs);

}  // namespace fcwarm::internal
