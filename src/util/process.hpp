// Private: process spawning and supervision helpers (argv vectors only, never a shell).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::util {

/// Options for Spawn().
struct SpawnOptions {
  std::vector<std::string> argv;           // argv[0] is the program (searched in PATH when it has no '/')
  std::vector<std::string> extra_env;      // "NAME=value" entries added to the inherited environment
  std::string stdout_path;                 // append stdout here (empty: /dev/null)
  std::string stderr_path;                 // append stderr here (empty: same as stdout)
  std::string cwd;                         // working directory (empty: inherit)
  std::string netns;                       // join /run/netns/<netns> before exec (empty: stay)
  bool new_session = true;                 // setsid() so signals to our group do not reach it
  bool die_with_parent = true;             // PR_SET_PDEATHSIG SIGKILL
};

/// A child process handle. Not copyable; the destructor does NOT kill the child.
struct Child {
  int pid = -1;
  uint64_t start_time = 0;  // /proc/<pid>/stat field 22 (clock ticks since boot)
};

/// Starts a process. The error names the program and errno text (exec failures are reported).
/// With die_with_parent the fork happens on a process-lifetime thread (PR_SET_PDEATHSIG is per thread).
Result<Child> Spawn(const SpawnOptions& opts);

// The one program lookup: a name without '/' is searched in PATH (default
// "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" when PATH is unset) and found when executable
// there; a path with '/' is returned as it is when `check_path` is false, else only when it is executable.
std::optional<std::string> FindProgram(const std::string& prog, bool check_path = false);

/// Non-blocking check: returns the exit status (as from waitpid) if the child exited and was reaped.
std::optional<int> TryReap(int pid);

/// "exit code N", "signal N" or "status N" for a waitpid() status, for error messages.
std::string DescribeWaitStatus(int status);

/// Waits up to `timeout` for the child to exit; returns the wait status, or nullopt on timeout.
std::optional<int> WaitFor(int pid, std::chrono::milliseconds timeout);

/// SIGTERM (if grace > 0), wait `grace`, then SIGKILL and reap. Safe on an already-reaped pid.
void TerminateAndReap(int pid, std::chrono::milliseconds grace);

/// Reads /proc/<pid>/stat field 22; nullopt when the process does not exist.
std::optional<uint64_t> ProcessStartTime(int pid);

/// True when `pid` exists and its start time equals `start_time` (the same process, not a reused pid).
bool IsSameProcess(int pid, uint64_t start_time);

/// Runs a program to completion with a timeout, capturing stdout+stderr (capped at 1 MiB).
struct RunResult {
  int exit_code = -1;  // -signal when killed
  std::string output;
};
Result<RunResult> Run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

}  // namespace fcwarm::util
