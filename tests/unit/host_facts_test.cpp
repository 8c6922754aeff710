#include <doctest/doctest.h>
#include <sys/utsname.h>

#include <fstream>
#include <sstream>

#include "core/host_facts.hpp"
#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;

namespace {

std::string Release() {
  utsname u{};
  REQUIRE(::uname(&u) == 0);
  return u.release;
}

bool IsHex(const std::string& s) { return s.find_first_not_of("0123456789abcdef") == std::string::npos; }

const char* kCpuinfo =
    "processor\t: 0\n"
    "vendor_id\t: GenuineIntel\n"
    "model name\t: Example CPU @ 2.00GHz\n"
    "cpu MHz\t\t: 1999.998\n"
    "flags\t\t: fpu vme de pse avx2\n"
    "\n"
    "processor\t: 1\n"
    "model name\t: Example CPU @ 2.00GHz\n"
    "cpu MHz\t\t: 2100.000\n"
    "flags\t\t: fpu vme de pse avx2\n";

}  // namespace

TEST_CASE("host facts: the kernel release and a full-length CPU digest, under their dotted names") {
  auto facts = internal::HostFacts();
  REQUIRE_MESSAGE(facts.ok(), facts.status().ToString());
  CHECK(facts->size() == 2);
  CHECK(facts->at("host.kernel") == Release());
  const std::string cpu = facts->at("host.cpu");
  CHECK(cpu.size() == 32);  // XXH3-128, never truncated
  CHECK(IsHex(cpu));
  std::ifstream f("/proc/cpuinfo");
  CHECK(cpu == internal::CpuDigest(f));
  auto again = internal::HostFacts();
  REQUIRE(again.ok());
  CHECK(*again == *facts);
}

TEST_CASE("host facts: the CPU digest covers the model and flags only") {
  std::istringstream a(kCpuinfo);
  const std::string digest = internal::CpuDigest(a);
  CHECK(digest.size() == 32);
  // Another clock speed or core count: same CPU, same digest.
  std::string other_clock = kCpuinfo;
  other_clock.replace(other_clock.find("1999.998"), 8, "3000.000");
  std::istringstream b(other_clock + "\nprocessor\t: 2\n");
  CHECK(internal::CpuDigest(b) == digest);
  // One more feature flag: another CPU as far as a snapshot is concerned.
  std::string more_flags = kCpuinfo;
  more_flags.replace(more_flags.find("avx2"), 4, "avx2 avx512f");
  std::istringstream c(more_flags);
  CHECK(internal::CpuDigest(c) != digest);
  std::string other_model = kCpuinfo;
  other_model.replace(other_model.find("Example"), 7, "Another");
  std::istringstream d(other_model);
  CHECK(internal::CpuDigest(d) != digest);
}

TEST_CASE("host facts: an unreadable cpuinfo is an error naming the file, not an empty digest") {
  TempDir dir;
  const std::string missing = (dir.path() / "cpuinfo").string();
  auto facts = internal::HostFacts(missing);
  REQUIRE_FALSE(facts.ok());
  CHECK(facts.status().code() == StatusCode::kUnavailable);
  CHECK(facts.status().message().find(missing) != std::string::npos);
  auto fixture = internal::HostFacts(WriteFile(dir.path() / "cpuinfo", kCpuinfo));
  REQUIRE(fixture.ok());
  std::istringstream s(kCpuinfo);
  CHECK(fixture->at("host.cpu") == internal::CpuDigest(s));
}

TEST_CASE("compatibility key: the core adds the host facts for every backend, and they win over a backend's") {
  TestBed bed;
  auto img = bed.AddImage();
  auto key = bed.service->snapshots().CompatibilityKeyFor(img);
  REQUIRE_MESSAGE(key.ok(), key.status().ToString());
  auto facts = internal::HostFacts();
  REQUIRE(facts.ok());
  // The fake backend reports host.kernel = "test"; the core's own fact replaces it.
  CHECK(key->second.at("host.kernel") == Release());
  CHECK(key->second.at("host.cpu") == facts->at("host.cpu"));
  CHECK(key->second.at("vmm.kind") == "fake");
  CHECK(key->second.at("vmm.version") == "1.0");
  // Every component name is "<scope>.<name>".
  for (const auto& [name, value] : key->second) {
    auto dot = name.find('.');
    CHECK_MESSAGE((dot != std::string::npos && dot > 0 && dot + 1 < name.size()), name);
  }
}
