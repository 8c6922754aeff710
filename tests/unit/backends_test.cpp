#include <doctest/doctest.h>

#include "fcwarm/backends.hpp"
#include "support/fake_vmm.hpp"

using namespace fcwarm;

TEST_CASE("backend selection: auto falls back and says why, explicit names must work, unknown names refused") {
  BackendSelection sel;
  sel.qemu.qemu_binary = "/nonexistent/qemu-system-x86_64";
  SUBCASE("auto without a working QEMU and without a fallback registers nothing") {
    auto r = SelectBackends(sel);
    REQUIRE(r.ok());
    CHECK(r->registry->Kinds().empty());
    REQUIRE(r->choices.size() == 1);
    CHECK(r->choices[0].requested == "auto");
    CHECK(r->choices[0].kind.empty());
    CHECK(r->choices[0].fell_back);
    CHECK(r->choices[0].detail.find("/nonexistent/qemu-system-x86_64") != std::string::npos);
  }
  SUBCASE("auto uses the fallback") {
    sel.auto_fallback = [] { return std::make_shared<testing::FakeVmm>("stand-in"); };
    auto r = SelectBackends(sel);
    REQUIRE(r.ok());
    CHECK(r->registry->Kinds() == std::vector<std::string>{"stand-in"});
    CHECK(r->choices[0].kind == "stand-in");
    CHECK(r->choices[0].fell_back);
  }
  SUBCASE("qemu named explicitly fails with the probe's error") {
    sel.backends = {"qemu"};
    auto r = SelectBackends(sel);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kNotFound);
    CHECK(r.status().message().find("backend qemu") == 0);
  }
  SUBCASE("firecracker named explicitly fails when its binary is missing") {
    sel.backends = {"firecracker"};
    sel.firecracker.binary = "/nonexistent/firecracker";
    auto r = SelectBackends(sel);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("backend firecracker") == 0);
  }
  SUBCASE("unknown and empty") {
    sel.backends = {"xen"};
    CHECK(SelectBackends(sel).status().code() == StatusCode::kInvalidArgument);
    CHECK(SelectBackends(sel).status().message().find("'xen'") != std::string::npos);
    sel.backends = {};
    CHECK(SelectBackends(sel).status().code() == StatusCode::kInvalidArgument);
  }
}
