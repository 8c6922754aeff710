// Private: the host's part of a snapshot's compatibility key (docs/architecture.md, "Manifest and compatibility
// key"). The core computes it once for every backend; a backend's Vmm::HostCompatibility() reports only facts
// about its VMM.
#pragma once

#include <istream>
#include <map>
#include <string>

#include "fcwarm/status.hpp"

namespace fcwarm::internal {

/// Component name of the host's kernel release (`uname -r`).
inline constexpr char kHostKernelKey[] = "host.kernel";
/// Component name of the digest of the host CPU's model and flags.
inline constexpr char kHostCpuKey[] = "host.cpu";

/// XXH3-128 (32 hex digits) of the first "model name" line and the first "flags" line of a /proc/cpuinfo
/// text: the same CPU model with the same features gives the same digest whatever the core count or clock.
std::string CpuDigest(std::istream& cpuinfo);

/// The host facts every snapshot depends on, named by kHostKernelKey and kHostCpuKey.
/// \param cpuinfo_path Where to read the CPU description (tests pass a file of their own).
/// \return The two components; Unavailable (naming the file) when uname fails or `cpuinfo_path` cannot be
/// read, because a key made without them would match any host.
Result<std::map<std::string, std::string>> HostFacts(const std::string& cpuinfo_path = "/proc/cpuinfo");

}  // namespace fcwarm::internal
