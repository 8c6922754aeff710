#include "core/host_facts.hpp"

#include <sys/utsname.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "util/common.hpp"

namespace fcwarm::internal {

std::string CpuDigest(std::istream& cpuinfo) {
  std::string line, model, flags;
  while (std::getline(cpuinfo, line)) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = line;
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line;
    if (!model.empty() && !flags.empty()) break;
  }
  return util::Xxh3Hex(model + "\n" + flags);
}

Result<std::map<std::string, std::string>> HostFacts(const std::string& cpuinfo_path) {
  utsname u{};
  if (::uname(&u) != 0) return Status::Unavailable(std::string("uname: ") + std::strerror(errno));
  std::ifstream cpuinfo(cpuinfo_path);
  if (!cpuinfo) return Status::Unavailable("host CPU facts: cannot read " + cpuinfo_path + ": " + std::strerror(errno));
  return std::map<std::string, std::string>{{kHostKernelKey, u.release}, {kHostCpuKey, CpuDigest(cpuinfo)}};
}

}  // namespace fcwarm::internal
