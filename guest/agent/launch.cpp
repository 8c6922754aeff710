// SystemOps::DeliverLaunch: the FIFO side of the `launch` op (docs/guest-protocol.md, op launch).
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "agent_core.hpp"

namespace fcwarm::agent {
namespace {

using Clock = std::chrono::steady_clock;

int MsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

LaunchOutcome SystemOps::DeliverLaunch(const std::string& channel_dir, const std::string& spec_bytes,
                                       std::chrono::milliseconds timeout, bool probe) {
  LaunchOutcome out;
  const std::string spec_path = channel_dir + "/spec";
  const auto deadline = Clock::now() + timeout;
  if (probe) {
    Fd w{::open(spec_path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)};
    if (w.fd >= 0) {
      out.waiting = true;
    } else if (errno != ENXIO) {
      out.error = spec_path + ": open: " + std::strerror(errno);
    }
    return out;
  }
  // The reading end of `ack` first: the launcher opens it for writing (non-blocking) once it has the spec.
  const std::string ack_path = channel_dir + "/ack";
  Fd ack{::open(ack_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  if (ack.fd < 0) {
    out.error = ack_path + ": open: " + std::strerror(errno);
    return out;
  }
  Fd w;
  while (true) {
    w.fd = ::open(spec_path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (w.fd >= 0) break;
    if (errno != ENXIO) {
      out.error = spec_path + ": open: " + std::strerror(errno);
      return out;
    }
    // No reader: the launcher is between a probe and its next open, or not started yet.
    if (MsLeft(deadline) == 0) {
      out.timed_out = true;
      return out;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  size_t off = 0;
  while (off < spec_bytes.size()) {
    ssize_t n = ::write(w.fd, spec_bytes.data() + off, spec_bytes.size() - off);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p{w.fd, POLLOUT, 0};
      if (::poll(&p, 1, MsLeft(deadline)) == 0) {
        out.timed_out = true;
        return out;
      }
      continue;
    }
    out.error = spec_path + ": write: " + std::strerror(errno);
    return out;
  }
  ::close(w.fd);
  w.fd = -1;
  out.waiting = true;
  // The ack: bytes are the launcher's error; a hang-up after its open means execve() closed it. A FIFO nobody
  // opened for writing since we opened it does not report POLLHUP, so poll() waits for the launcher.
  std::string msg;
  while (true) {
    pollfd p{ack.fd, POLLIN, 0};
    int r = ::poll(&p, 1, MsLeft(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      out.error = ack_path + ": poll: " + std::strerror(errno);
      return out;
    }
    if (r == 0) {
      out.timed_out = true;
      return out;
    }
    if (p.revents & POLLIN) {
      char buf[1024];
      ssize_t n = ::read(ack.fd, buf, sizeof buf);
      if (n > 0) {
        if (msg.size() < 4096) msg.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    }
    if (p.revents & (POLLHUP | POLLERR)) break;
  }
  out.exec_ok = msg.empty();
  out.exec_error = msg;
  return out;
}

}  // namespace fcwarm::agent
