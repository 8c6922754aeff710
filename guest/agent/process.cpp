// fork/execvp with a deadline and capped output capture. No shell is involved.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "agent_core.hpp"

namespace fcwarm::agent {
namespace {

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// Reads what is available from fd into `out` up to `cap`; the rest is discarded. Returns false on EOF.
bool Drain(int fd, std::string& out, std::size_t cap, bool& truncated) {
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      std::size_t room = out.size() < cap ? cap - out.size() : 0;
      std::size_t take = std::min<std::size_t>(room, static_cast<std::size_t>(n));
      out.append(buf, take);
      if (take < static_cast<std::size_t>(n)) truncated = true;
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return true;
    return false;
  }
}

}  // namespace

ProcessResult RunProcess(const ProcessSpec& spec) {
  ProcessResult r;
  if (spec.argv.empty()) {
    r.error = "empty argv";
    return r;
  }
  // Everything the child needs is prepared before fork (the parent may be multi-threaded).
  std::vector<char*> argv;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, exec_pipe[2] = {-1, -1};
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 ||
      pipe2(exec_pipe, O_CLOEXEC) != 0) {
    r.error = std::string("pipe: ") + strerror(errno);
    for (int* p : {in_pipe, out_pipe, err_pipe, exec_pipe}) {
      CloseFd(p[0]);
      CloseFd(p[1]);
    }
    return r;
  }
  pid_t pid = fork();
  if (pid < 0) {
    r.error = std::string("fork: ") + strerror(errno);
    for (int* p : {in_pipe, out_pipe, err_pipe, exec_pipe}) {
      CloseFd(p[0]);
      CloseFd(p[1]);
    }
    return r;
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    execvp(argv[0], argv.data());
    int e = errno;
    ssize_t ignored = write(exec_pipe[1], &e, sizeof e);
    (void)ignored;
    _exit(127);
  }
  setpgid(pid, pid);  // also from the parent, so the group exists before any kill
  CloseFd(in_pipe[0]);
  CloseFd(out_pipe[1]);
  CloseFd(err_pipe[1]);
  CloseFd(exec_pipe[1]);

  // Did execvp succeed? The CLOEXEC pipe closes without data on success.
  int child_errno = 0;
  ssize_t got;
  do {
    got = read(exec_pipe[0], &child_errno, sizeof child_errno);
  } while (got < 0 && errno == EINTR);
  CloseFd(exec_pipe[0]);
  if (got == sizeof child_errno) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    CloseFd(in_pipe[1]);
    CloseFd(out_pipe[0]);
    CloseFd(err_pipe[0]);
    r.error = strerror(child_errno);
    return r;
  }
  r.started = true;

  for (int fd : {in_pipe[1], out_pipe[0], err_pipe[0]}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::size_t in_off = 0;
  if (spec.stdin_data.empty()) CloseFd(in_pipe[1]);

  auto deadline = std::chrono::steady_clock::now() + spec.timeout;
  while (out_pipe[0] >= 0 || err_pipe[0] >= 0) {
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      r.timed_out = true;
      break;
    }
    pollfd fds[3];
    int n = 0;
    int idx_in = -1, idx_out = -1, idx_err = -1;
    if (in_pipe[1] >= 0) {
      idx_in = n;
      fds[n++] = {in_pipe[1], POLLOUT, 0};
    }
    if (out_pipe[0] >= 0) {
      idx_out = n;
      fds[n++] = {out_pipe[0], POLLIN, 0};
    }
    if (err_pipe[0] >= 0) {
      idx_err = n;
      fds[n++] = {err_pipe[0], POLLIN, 0};
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
    int pr = poll(fds, n, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (pr < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (idx_in >= 0 && fds[idx_in].revents) {
      if (fds[idx_in].revents & (POLLERR | POLLHUP)) {
        CloseFd(in_pipe[1]);
      } else {
        ssize_t w = write(in_pipe[1], spec.stdin_data.data() + in_off, spec.stdin_data.size() - in_off);
        if (w > 0) in_off += static_cast<std::size_t>(w);
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || in_off == spec.stdin_data.size())
          CloseFd(in_pipe[1]);
      }
    }
    if (idx_out >= 0 && fds[idx_out].revents && !Drain(out_pipe[0], r.out, spec.max_output, r.truncated))
      CloseFd(out_pipe[0]);
    if (idx_err >= 0 && fds[idx_err].revents && !Drain(err_pipe[0], r.err, spec.max_output, r.truncated))
      CloseFd(err_pipe[0]);
  }
  CloseFd(in_pipe[1]);
  CloseFd(out_pipe[0]);
  CloseFd(err_pipe[0]);

  // Both streams closed (or the deadline passed): wait for the exit within what is left of the deadline.
  int status = 0;
  useconds_t nap = 1000;
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (r.timed_out || std::chrono::steady_clock::now() >= deadline) {
      r.timed_out = true;
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    usleep(nap);
    nap = std::min<useconds_t>(nap * 2, 50000);
  }
  if (r.timed_out) {
    kill(-pid, SIGKILL);  // stragglers in the group
  }
  if (WIFEXITED(status))
    r.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    r.exit_code = -WTERMSIG(status);
  return r;
}

}  // namespace fcwarm::agent
