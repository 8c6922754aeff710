#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "net/ip.hpp"
#include "net/netns.hpp"
#include "net/tap.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
using namespace std::chrono_literals;

namespace {

// A stand-in for iproute2: appends its arguments to <dir>/calls, fails (exit 2, one line on stderr) when they
// contain `fail_on`.
std::string FakeIp(const TempDir& dir, const std::string& fail_on) {
  std::string path = WriteFile(dir.path() / "ip",
                               "#!/bin/sh\n"
                               "echo \"$*\" >> '" + (dir.path() / "calls").string() + "'\n"
                               "case \"$*\" in *'" + fail_on + "'*) echo 'RTNETLINK answers: nope' >&2; exit 2;; esac\n"
                               "exit 0\n");
  REQUIRE(::chmod(path.c_str(), 0755) == 0);
  return path;
}

std::vector<std::string> Calls(const TempDir& dir) {
  std::ifstream f(dir.path() / "calls");
  std::vector<std::string> out;
  for (std::string line; std::getline(f, line);) out.push_back(line);
  return out;
}

}  // namespace

TEST_CASE("net: GatewayCidr is empty without an identity and names the malformed field") {
  auto ok = net::GatewayCidr("10.213.0.21", "10.213.0.22/30");
  REQUIRE(ok.ok());
  CHECK(*ok == "10.213.0.21/30");
  // No identity: nothing to assign, not an error.
  CHECK(net::GatewayCidr("", "10.213.0.22/30").value() == "");
  CHECK(net::GatewayCidr("10.213.0.21", "").value() == "");
  struct Bad {
    const char* gateway;
    const char* ip_cidr;
    const char* field;
  };
  for (const Bad& b : {Bad{"10.213.0.21", "10.213.0.22", "ip_cidr"}, Bad{"10.213.0.21", "10.213.0.x/30", "ip_cidr"},
                       Bad{"10.213.0.21", "10.213.0.22/31", "ip_cidr"}, Bad{"10.213.0.21", "10.213.0.22/", "ip_cidr"},
                       Bad{"10.213.0.21", "10.213.0.22/3a", "ip_cidr"}, Bad{"gw", "10.213.0.22/30", "gateway"}}) {
    auto r = net::GatewayCidr(b.gateway, b.ip_cidr);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_MESSAGE(r.status().message().rfind(b.field, 0) == 0, r.status().message());
  }
}

TEST_CASE("net: InterfaceExists and NetnsExists answer questions, false for an empty name") {
  CHECK(net::InterfaceExists("lo"));
  CHECK_FALSE(net::InterfaceExists(""));
  CHECK_FALSE(net::InterfaceExists("fcwarm-nope0"));
  CHECK_FALSE(net::NetnsExists(""));  // /run/netns/ itself is not a namespace
  CHECK_FALSE(net::NetnsExists("fcwarm-nope-" + util::Xxh3Hex("net_test").substr(0, 8)));
}

TEST_CASE("net: RunIp returns Status with the command and the tool's output") {
  TempDir dir;
  const std::string ip = FakeIp(dir, "fail");
  CHECK(net::RunIp(ip, {"link", "show"}, 10s).ok());
  auto st = net::RunIp(ip, {"link", "fail"}, 10s);
  CHECK(st.code() == StatusCode::kUnavailable);
  CHECK(st.message() == "'" + ip + " link fail' failed (exit 2): RTNETLINK answers: nope");
  auto missing = net::RunIp((dir.path() / "no-ip").string(), {"link"}, 10s);
  CHECK_FALSE(missing.ok());
  CHECK(missing.message().find("no-ip link") != std::string::npos);
  CHECK(Calls(dir) == std::vector<std::string>{"link show", "link fail"});
}

TEST_CASE("net: a TAP plan is created in order and removed again when a step fails") {
  TempDir dir;
  SUBCASE("a TAP name must have 1-15 characters (checked before any command runs)") {
    for (const char* name : {"", "fcwarm-tap-0123456"}) {
      net::TapNetwork tap({.ip_binary = FakeIp(dir, "never"), .tap = name});
      auto st = tap.Create();
      CHECK(st.code() == StatusCode::kInvalidArgument);
      CHECK(st.message().find("TAP name") != std::string::npos);
    }
    CHECK(Calls(dir).empty());
  }
  SUBCASE("in a namespace of its own, released as a whole") {
    net::TapNetwork tap({.ip_binary = FakeIp(dir, "never"), .tap = "tap0", .netns = "fcw-t", .gateway_cidr = "10.1.0.1/30"});
    REQUIRE(tap.Create().ok());
    CHECK(tap.Release().ok());
    CHECK(tap.Release().ok());  // idempotent
    CHECK(Calls(dir) == std::vector<std::string>{"netns del fcw-t", "netns add fcw-t", "-n fcw-t link set dev lo up",
                                                 "-n fcw-t tuntap add dev tap0 mode tap",
                                                 "-n fcw-t addr add 10.1.0.1/30 dev tap0",
                                                 "-n fcw-t link set dev tap0 up", "netns del fcw-t"});
  }
  SUBCASE("in the root namespace: a failed step removes the TAP and says which") {
    {
      net::TapNetwork tap({.ip_binary = FakeIp(dir, "addr add"), .tap = "fcw-nt0", .gateway_cidr = "10.1.0.1/30"});
      auto st = tap.Create();
      CHECK(st.code() == StatusCode::kUnavailable);
      CHECK(st.message().find("create TAP fcw-nt0") != std::string::npos);
      CHECK(st.message().find("RTNETLINK answers: nope") != std::string::npos);
    }  // the destructor has nothing left to delete
    CHECK(Calls(dir) == std::vector<std::string>{"tuntap add dev fcw-nt0 mode tap", "addr add 10.1.0.1/30 dev fcw-nt0",
                                                 "link del dev fcw-nt0"});
  }
}

TEST_CASE("net: a netns plan checks its names and fails before running anything") {
  net::NetnsPlan plan;
  CHECK(net::NamesForVm("vm-1", "fcwarm-netns-x-", "v", &plan).code() == StatusCode::kInvalidArgument);
  REQUIRE(net::NamesForVm("vm-1", "fcw-", "fcv-", &plan).ok());
  CHECK(plan.netns.size() == 14);
  plan.host_veth.clear();
  plan.gateway_cidr = "10.1.0.1/30";
  plan.ip_binary = "/nonexistent/ip";
  net::NetnsNetwork network(plan);
  auto st = network.Create();
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(st.message() == "a gateway address needs a host veth");
}

TEST_CASE("net: DisableIpv6 takes one interface's name, never all of them, and names what it cannot change") {
  for (const char* bad : {"", "all", "default", "..", "../all", "fcwarm-way-too-long0"}) {
    CAPTURE(bad);
    auto st = net::DisableIpv6(bad);
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK(st.message().find("interface name") == 0);
  }
  if (std::filesystem::exists("/proc/sys/net/ipv6")) {
    auto st = net::DisableIpv6("fcwarm-nope0");
    CHECK(st.code() == StatusCode::kUnavailable);
    CHECK(st.message().find("disable IPv6 on fcwarm-nope0") == 0);
  }
}
