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

/// The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...), or nullopt when the process does not exist.
std::optional<char> ProcessState(int pid);

/// The arguments of a running process (/proc/<pid>/cmdline), or nullopt when it cannot be read.
std::optional<std::vector<std::string>> ProcessArgs(int pid);

/// A process this one did not start (a VMM an earlier run of the server left running, docs/operations.md,
/// "Restarts and live restore"): it is not our child, so waitpid() cannot watch it. A pidfd can: it refers to
/// exactly the process it was opened for, even after its pid is reused, and becomes readable when it exits.
/// Not copyable; closes the pidfd on destruction (the process keeps running).
class ForeignProcess {
 public:
  ForeignProcess() = default;
  ~ForeignProcess();
  ForeignProcess(ForeignProcess&& o) noexcept;
  ForeignProcess& operator=(ForeignProcess&& o) noexcept;
  ForeignProcess(const ForeignProcess&) = delete;
  ForeignProcess& operator=(const ForeignProcess&) = delete;

  /// Opens the process `pid` if it still is the one that started at `start_time` and has not exited
  /// (a zombie counts as exited). FailedPrecondition naming what differs; Unavailable when pidfd_open fails.
  static Result<ForeignProcess> Open(int pid, uint64_t start_time);
  int pid() const { return pid_; }
  /// True once the process exited (never true again for a reused pid).
  bool Exited() const;
  /// Waits up to `timeout` for the process to exit; true when it did.
  bool WaitExit(std::chrono::milliseconds timeout) const;
  /// Sends `sig` to exactly this process (pidfd_send_signal). Ok when it has exited already.
  Status Signal(int sig) const;

 private:
  int pid_ = -1;
  int fd_ = -1;
};

/// Runs a program to completion with a timeout, capturing stdout+stderr (capped at 1 MiB).
struct RunResult {
  int exit_code = -1;  // -signal when killed
  std::string output;
};
Result<RunResult> Run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

}  // namespace fcwarm::util
