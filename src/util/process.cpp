#include "util/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

extern char** environ;

namespace fcwarm::util {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

int StatusToExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

}  // namespace

namespace {
Result<Child> SpawnHere(const SpawnOptions& opts);

// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not when the process does. A VMM
// started from a short-lived thread (std::async, a shrinking pool) would be killed when that thread ends, so
// children that must die with the process are forked from one thread that lives as long as the process.
class SpawnThread {
 public:
  SpawnThread() { std::thread([this] { Loop(); }).detach(); }
  Result<Child> Spawn(const SpawnOptions& opts) {
    std::packaged_task<Result<Child>()> task([&opts] { return SpawnHere(opts); });
    auto result = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return result.get();
  }

 private:
  void Loop() {
    while (true) {
      std::packaged_task<Result<Child>()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<Result<Child>()>> queue_;
};
}  // namespace

Result<Child> Spawn(const SpawnOptions& opts) {
  if (!opts.die_with_parent) return SpawnHere(opts);
  static SpawnThread* thread = new SpawnThread();  // never destroyed: its detached thread outlives main()
  return thread->Spawn(opts);
}

namespace {
Result<Child> SpawnHere(const SpawnOptions& opts) {
  if (opts.argv.empty()) return Status::InvalidArgument("spawn: empty argv");
  // Resolved before fork: execve in the child is async-signal-safe, a PATH search is not.
  auto program = FindProgram(opts.argv[0]);
  if (!program) return Status::NotFound("spawn: program '" + opts.argv[0] + "' not found in PATH");

  std::vector<char*> argv;
  for (const auto& a : opts.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; e && *e; ++e) env_store.emplace_back(*e);
  for (const auto& e : opts.extra_env) env_store.push_back(e);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);

  int out_fd = ::open(opts.stdout_path.empty() ? "/dev/null" : opts.stdout_path.c_str(),
                      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (out_fd < 0) return Status::Unavailable("spawn: cannot open " + opts.stdout_path + ": " + ErrnoText(errno));
  int err_fd = -1;
  if (!opts.stderr_path.empty()) {
    err_fd = ::open(opts.stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (err_fd < 0) {
      ::close(out_fd);
      return Status::Unavailable("spawn: cannot open " + opts.stderr_path + ": " + ErrnoText(errno));
    }
  }
  int in_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int ns_fd = -1;
  if (!opts.netns.empty()) {
    std::string ns_path = "/run/netns/" + opts.netns;
    ns_fd = ::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) {
      ::close(out_fd);
      if (err_fd >= 0) ::close(err_fd);
      ::close(in_fd);
      return Status::Unavailable("spawn: cannot open network namespace " + ns_path + ": " + ErrnoText(errno));
    }
  }
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    return Status::Unavailable("spawn: pipe: " + ErrnoText(errno));
  }
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    ::close(out_fd);
    if (err_fd >= 0) ::close(err_fd);
    ::close(in_fd);
    if (ns_fd >= 0) ::close(ns_fd);
    return Status::Unavailable("spawn: fork: " + ErrnoText(e));
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    auto fail = [&](int stage) {
      int payload[2] = {stage, errno};
      ssize_t ignored = ::write(pipefd[1], payload, sizeof(payload));
      (void)ignored;
      ::_exit(127);
    };
    if (opts.die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
    }
    if (opts.new_session) ::setsid();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (ns_fd >= 0 && ::setns(ns_fd, CLONE_NEWNET) != 0) fail(1);
    if (::dup2(in_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd >= 0 ? err_fd : out_fd, 2) < 0) fail(2);
    if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) fail(3);
    ::execve(program->c_str(), argv.data(), envp.data());
    fail(4);
  }
  ::close(pipefd[1]);
  ::close(out_fd);
  if (err_fd >= 0) ::close(err_fd);
  ::close(in_fd);
  if (ns_fd >= 0) ::close(ns_fd);
  int payload[2] = {0, 0};
  ssize_t n;
  do {
    n = ::read(pipefd[0], payload, sizeof(payload));
  } while (n < 0 && errno == EINTR);
  ::close(pipefd[0]);
  if (n == static_cast<ssize_t>(sizeof(payload))) {
    ::waitpid(pid, nullptr, 0);
    static const char* stages[] = {"", "setns", "redirect", "chdir", "exec"};
    return Status::Unavailable("spawn: " + std::string(stages[(payload[0] >= 1 && payload[0] <= 4) ? payload[0] : 4]) + " of '" +
                               *program + "' failed: " + ErrnoText(payload[1]));
  }
  Child child;
  child.pid = pid;
  child.start_time = ProcessStartTime(pid).value_or(0);
  return child;
}

}  // namespace

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

std::optional<int> TryReap(int pid) {
  if (pid <= 0) return std::nullopt;
  int status = 0;
  pid_t r = ::waitpid(pid, &status, WNOHANG);
  if (r == pid) return status;
  return std::nullopt;
}

std::optional<int> WaitFor(int pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto sleep = std::chrono::milliseconds(1);
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno == ECHILD) return 0;  // already reaped elsewhere
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::milliseconds(20));
  }
}

void TerminateAndReap(int pid, std::chrono::milliseconds grace) {
  if (pid <= 0) return;
  if (grace.count() > 0) {
    if (::kill(pid, SIGTERM) != 0 && errno == ESRCH) {
      TryReap(pid);
      return;
    }
    if (WaitFor(pid, grace)) return;
  }
  ::kill(pid, SIGKILL);
  WaitFor(pid, std::chrono::seconds(10));
}

std::optional<uint64_t> ProcessStartTime(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return std::nullopt;
  std::string line;
  std::getline(f, line);
  auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  // Fields after comm start at field 3 (state); start time is field 22.
  for (int i = 3; i <= 22; ++i) {
    if (!(rest >> field)) return std::nullopt;
  }
  try {
    return std::stoull(field);
  } catch (...) {
    return std::nullopt;
  }
}

bool IsSameProcess(int pid, uint64_t start_time) {
  auto st = ProcessStartTime(pid);
  return st && *st == start_time;
}

std::optional<char> ProcessState(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!f || !std::getline(f, line)) return std::nullopt;
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return std::nullopt;
  return line[close + 2];
}

std::optional<std::vector<std::string>> ProcessArgs(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  if (!f) return std::nullopt;
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    out.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// ---- ForeignProcess -------------------------------------------------------------------------------------------

ForeignProcess::~ForeignProcess() {
  if (fd_ >= 0) ::close(fd_);
}

ForeignProcess::ForeignProcess(ForeignProcess&& o) noexcept : pid_(o.pid_), fd_(o.fd_) {
  o.pid_ = -1;
  o.fd_ = -1;
}

ForeignProcess& ForeignProcess::operator=(ForeignProcess&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    pid_ = o.pid_;
    fd_ = o.fd_;
    o.pid_ = -1;
    o.fd_ = -1;
  }
  return *this;
}

Result<ForeignProcess> ForeignProcess::Open(int pid, uint64_t start_time) {
  if (pid <= 1) return Status::FailedPrecondition("pid " + std::to_string(pid) + " is not a VMM process");
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    if (errno == ESRCH) return Status::FailedPrecondition("process " + std::to_string(pid) + " is gone");
    return Status::Unavailable("pidfd_open of process " + std::to_string(pid) + ": " + ErrnoText(errno));
  }
  ForeignProcess p;
  p.pid_ = pid;
  p.fd_ = fd;
  // Checked after the pidfd exists, so the process they describe is the one the pidfd refers to.
  auto started = ProcessStartTime(pid);
  if (!started || *started != start_time) {
    return Status::FailedPrecondition("process " + std::to_string(pid) +
                                      " is another process now (its pid was reused)");
  }
  auto state = ProcessState(pid);
  if (!state || *state == 'Z' || *state == 'X' || p.Exited()) {
    return Status::FailedPrecondition("process " + std::to_string(pid) + " has exited");
  }
  return p;
}

bool ForeignProcess::Exited() const { return WaitExit(std::chrono::milliseconds(0)); }

bool ForeignProcess::WaitExit(std::chrono::milliseconds timeout) const {
  if (fd_ < 0) return true;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (r > 0) return true;
    if (r < 0 && errno == EINTR) continue;
    return false;
  }
}

Status ForeignProcess::Signal(int sig) const {
  if (fd_ < 0) return Status::Ok();
  if (::syscall(SYS_pidfd_send_signal, fd_, sig, nullptr, 0) != 0 && errno != ESRCH) {
    return Status::Unavailable("signal " + std::to_string(sig) + " to process " + std::to_string(pid_) + ": " +
                               ErrnoText(errno));
  }
  return Status::Ok();
}

Result<RunResult> Run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::Unavailable("run: pipe: " + ErrnoText(errno));
  std::string out_path = "/proc/self/fd/" + std::to_string(fds[1]);
  SpawnOptions opts;
  opts.argv = argv;
  opts.stdout_path = out_path;
  auto child = Spawn(opts);
  ::close(fds[1]);
  if (!child.ok()) {
    ::close(fds[0]);
    return child.status();
  }
  RunResult result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fds[0], POLLIN, 0};
    int pr = ::poll(&p, 1, static_cast<int>(left.count()));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) break;
    ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (result.output.size() < (1u << 20)) result.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  auto st = WaitFor(child->pid, std::max(left, std::chrono::milliseconds(0)));
  if (!st) {
    TerminateAndReap(child->pid, std::chrono::milliseconds(0));
    return Status::DeadlineExceeded("run: '" + argv[0] + "' did not finish within " +
                                    std::to_string(timeout.count()) + " ms");
  }
  result.exit_code = StatusToExitCode(*st);
  return result;
}

std::optional<std::string> FindProgram(const std::string& prog, bool check_path) {
  if (prog.find('/') != std::string::npos) {
    if (check_path && ::access(prog.c_str(), X_OK) != 0) return std::nullopt;
    return prog;
  }
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::stringstream ss(p);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    std::string cand = dir + "/" + prog;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
  }
  return std::nullopt;
}

}  // namespace fcwarm::util
