// Private: named failpoints (docs/failpoints.md). A failpoint is a place in the code where a test can make
// the process die at once (`crash`: SIGKILL, as if the machine or the OOM killer took it) or make the step
// fail through its normal error path (`error`). They are compiled in and off unless fcwarm-server starts with
// FCWARM_FAILPOINTS=name=crash|error[@N][,...] (Configure()); while none is armed a failpoint costs one
// relaxed atomic load and a branch.
//
// Every name is in kFailpoints below (the one registry) and in docs/failpoints.md; a name used in the code
// but missing here does not compile, and tests/unit/failpoint_test.cpp fails when the registry, the docs and
// the names used in the sources differ.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "fcwarm/status.hpp"

namespace fcwarm::failpoint {

/// What a failpoint may be armed with.
enum class Modes { kCrashOrError, kCrashOnly };

/// One registered failpoint.
struct Info {
  std::string_view name;
  Modes modes;
};

// The registry, in docs/failpoints.md's order. A failpoint whose place cannot return an error (the work it
// follows is committed and nothing would undo it) is crash-only: arming it with `error` is refused.
inline constexpr Info kFailpoints[] = {
    {"snapshot.build.boot", Modes::kCrashOrError},
    {"snapshot.build.wait", Modes::kCrashOrError},
    {"snapshot.build.pause", Modes::kCrashOrError},
    {"snapshot.build.write_memory", Modes::kCrashOrError},
    {"snapshot.build.write_disk", Modes::kCrashOrError},
    {"snapshot.build.checksum", Modes::kCrashOrError},
    {"snapshot.build.publish", Modes::kCrashOrError},
    {"snapshot.rebuild", Modes::kCrashOnly},
    {"snapshot.gc", Modes::kCrashOrError},
    {"restore.warm.restore", Modes::kCrashOrError},
    {"restore.cold.boot", Modes::kCrashOrError},
    {"restore.identity", Modes::kCrashOrError},
    {"container.create", Modes::kCrashOrError},
    {"container.start", Modes::kCrashOrError},
    {"pool.fill", Modes::kCrashOrError},
    {"pool.take", Modes::kCrashOrError},
    {"store.tx.before_commit", Modes::kCrashOrError},
    {"store.tx.after_commit", Modes::kCrashOnly},
};
inline constexpr size_t kCount = sizeof(kFailpoints) / sizeof(kFailpoints[0]);

namespace detail {
extern std::atomic<bool> g_armed;
void UnknownFailpointName();  // never defined: a consteval call of it does not compile
}  // namespace detail

/// A registered failpoint's name, checked when the code compiles.
class Name {
 public:
  consteval Name(const char* name) : index_(IndexOf(name)) {}  // NOLINT(google-explicit-constructor)
  size_t index() const { return index_; }
  std::string_view str() const { return kFailpoints[index_].name; }

 private:
  static consteval size_t IndexOf(std::string_view name) {
    for (size_t i = 0; i < kCount; ++i) {
      if (kFailpoints[i].name == name) return i;
    }
    detail::UnknownFailpointName();  // the name is not in kFailpoints
    return kCount;
  }
  size_t index_;
};

/// True when some failpoint is armed (one relaxed load).
inline bool Armed() { return detail::g_armed.load(std::memory_order_relaxed); }

/// Counts a hit of an armed failpoint and acts on it: `crash` raises SIGKILL, `error` returns
/// Internal("failpoint NAME: injected error"), otherwise (not armed, or not its N-th hit) Ok.
Status Fire(Name name);

/// The failpoint's injected error, or Ok; the expression form of FCWARM_FAILPOINT.
inline Status Check(Name name) {
  if (!Armed()) [[likely]]
    return Status::Ok();
  return Fire(name);
}

/// Arms failpoints from a spec "name=crash|error[@N][,name=...]" (empty: none). `@N` fires at the N-th hit
/// only (1-based); without it every hit fires. InvalidArgument naming the entry for an unknown name or mode,
/// a mode the failpoint does not support, a bad N or a name given twice; nothing is armed then.
Status Configure(std::string_view spec);
/// Configure() with the environment variable FCWARM_FAILPOINTS (unset: none); errors name the variable.
Status ConfigureFromEnvironment();
/// Disarms every failpoint and resets the hit counts.
void Reset();
/// The armed failpoints as "name=mode[@N]" joined by ',' (empty when none), for the startup log.
std::string Describe();

}  // namespace fcwarm::failpoint

/// Returns the injected error from the enclosing function (Status or Result<T>) when the failpoint fires.
#define FCWARM_FAILPOINT(name)                                                             \
  do {                                                                                     \
    if (::fcwarm::failpoint::Armed()) [[unlikely]] {                                       \
      if (auto fcwarm_fp_status = ::fcwarm::failpoint::Fire(name); !fcwarm_fp_status.ok()) \
        return fcwarm_fp_status;                                                           \
    }                                                                                      \
  } while (0)

/// When `result` (a Status or Result<T>) is ok and the failpoint fires, replaces it with the injected error,
/// so the code after it takes the step's own error path (what `result` held, e.g. a started VM, is released).
#define FCWARM_FAILPOINT_INTO(name, result)                                                \
  do {                                                                                     \
    if (::fcwarm::failpoint::Armed() && (result).ok()) [[unlikely]] {                      \
      if (auto fcwarm_fp_status = ::fcwarm::failpoint::Fire(name); !fcwarm_fp_status.ok()) \
        (result) = std::move(fcwarm_fp_status);                                            \
    }                                                                                      \
  } while (0)

/// The injected error or Ok (an expression), for a step whose error path is written out at the call.
#define FCWARM_FAILPOINT_CHECK(name) ::fcwarm::failpoint::Check(name)
