#include <doctest/doctest.h>

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
