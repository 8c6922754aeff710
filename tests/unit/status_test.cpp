#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

#include "fcwarm/container_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

using namespace fcwarm;

TEST_CASE("Status carries code and message") {
  Status ok;
  CHECK(ok.ok());
  CHECK(ok.ToString() == "ok");
  auto nf = Status::NotFound("thing 'x' not found");
  CHECK_FALSE(nf.ok());
  CHECK(nf.code() == StatusCode::kNotFound);
  CHECK(nf.ToString() == "not_found: thing 'x' not found");
  CHECK(nf.WithContext("lookup").message() == "lookup: thing 'x' not found");
  CHECK(StatusCodeName(StatusCode::kFailedPrecondition) == "failed_precondition");
}

TEST_CASE("one status table: every code once, in enum order, names round-trip") {
  const auto& table = StatusTable();
  REQUIRE(table.size() == 10);
  std::set<std::string_view> names;
  for (size_t i = 0; i < table.size(); ++i) {
    CHECK(static_cast<size_t>(table[i].code) == i);
    CHECK(names.insert(table[i].name).second);
    CHECK(&StatusInfo(table[i].code) == &table[i]);
    auto parsed = ParseStatusCode(table[i].name);
    REQUIRE(parsed.ok());
    CHECK(*parsed == table[i].code);
    if (table[i].code == StatusCode::kOk) {
      CHECK(table[i].python_exception.empty());
      CHECK(table[i].cli_exit_code == 0);
    } else {
      CHECK_FALSE(table[i].python_exception.empty());
      CHECK(table[i].cli_exit_code != 0);
      CHECK(table[i].http_status >= 400);
    }
  }
  CHECK(ParseStatusCode("nope").status().code() == StatusCode::kInvalidArgument);
  // The adapters' contract (REST status, Python exception class, CLI exit code).
  CHECK(StatusInfo(StatusCode::kInvalidArgument).http_status == 400);
  CHECK(StatusInfo(StatusCode::kInvalidArgument).python_exception == "InvalidArgumentError");
  CHECK(StatusInfo(StatusCode::kInvalidArgument).cli_exit_code == 2);
  CHECK(StatusInfo(StatusCode::kNotFound).http_status == 404);
  CHECK(StatusInfo(StatusCode::kNotFound).python_exception == "NotFoundError");
  CHECK(StatusInfo(StatusCode::kNotFound).cli_exit_code == 3);
  CHECK(StatusInfo(StatusCode::kResourceExhausted).http_status == 429);
  CHECK(StatusInfo(StatusCode::kResourceExhausted).cli_exit_code == 4);
  CHECK(StatusInfo(StatusCode::kUnavailable).python_exception == "UnavailableError");
  CHECK(StatusInfo(StatusCode::kInternal).http_status == 500);
  // A guest that broke the agent protocol: the upstream sent an invalid response.
  CHECK(StatusInfo(StatusCode::kDataLoss).name == "data_loss");
  CHECK(StatusInfo(StatusCode::kDataLoss).http_status == 502);
  CHECK(StatusInfo(StatusCode::kDataLoss).python_exception == "UnavailableError");
}

TEST_CASE("Result holds a value or an error") {
  Result<int> r = 42;
  REQUIRE(r.ok());
  CHECK(*r == 42);
  CHECK(r.status().ok());
  Result<int> e = Status::InvalidArgument("bad");
  CHECK_FALSE(e.ok());
  CHECK(e.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("enum names round-trip and unknown names are refused") {
  for (auto s : {SnapshotState::kCreating, SnapshotState::kReady, SnapshotState::kUnhealthy, SnapshotState::kDeleted}) {
    CHECK(ParseSnapshotState(ToString(s)).value() == s);
  }
  for (auto r : {FallbackReason::kNoSnapshot, FallbackReason::kSnapshotCreating, FallbackReason::kSnapshotUnhealthy,
                 FallbackReason::kIncompatible, FallbackReason::kCorrupt, FallbackReason::kRestoreFailed,
                 FallbackReason::kVerifyFailed}) {
    CHECK(ParseFallbackReason(ToString(r)).value() == r);
  }
  CHECK(ToString(FallbackReason::kNoSnapshot) == "no_snapshot");
  CHECK(ToString(BuildPhase::kWaitingRuntime) == "waiting_runtime");
  CHECK(ToString(BootMethod::kWarm) == "warm");
  auto bad = ParseSnapshotState("readyish");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("state") != std::string::npos);
  CHECK(bad.status().message().find("creating, ready, unhealthy, deleted") != std::string::npos);
}

TEST_CASE("event kinds round-trip, and the names are the ones the store and REST use") {
  std::vector<std::string> names;
  for (auto k : {EventKind::kBoot, EventKind::kBuild, EventKind::kHealth, EventKind::kGc, EventKind::kReconcile,
                 EventKind::kSnapshot}) {
    CHECK(ParseEventKind(ToString(k)).value() == k);
    names.emplace_back(ToString(k));
  }
  CHECK(names == std::vector<std::string>{"boot", "build", "health", "gc", "reconcile", "snapshot"});
  auto bad = ParseEventKind("boots");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad.status().message() == "kind: 'boots' is not one of boot, build, health, gc, reconcile, snapshot, repository");
}

TEST_CASE("IsTerminal: only provisioning and running containers can still change by themselves") {
  CHECK_FALSE(IsTerminal(ContainerState::kProvisioning));
  CHECK_FALSE(IsTerminal(ContainerState::kRunning));
  for (auto s : {ContainerState::kExited, ContainerState::kStopped, ContainerState::kFailed, ContainerState::kLost,
                 ContainerState::kDestroyed}) {
    CHECK(IsTerminal(s));
  }
}
