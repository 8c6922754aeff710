#include "backends/firecracker/vsock.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <mutex>

namespace fcwarm::firecracker {
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

int MsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

// Waits for `events` on fd; Ok, DeadlineExceeded or Unavailable.
Status WaitFd(int fd, short events, Clock::time_point deadline, const std::string& what) {
  while (true) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, MsLeft(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::Unavailable(what + ": poll: " + std::strerror(errno));
    if (r == 0) return Status::DeadlineExceeded(what + ": timed out");
    return Status::Ok();
  }
}

Status WriteAll(int fd, const std::string& data, Clock::time_point deadline, const std::string& what) {
  size_t off = 0;
  while (off < data.size()) {
    if (auto st = WaitFd(fd, POLLOUT, deadline, what); !st.ok()) return st;
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return Status::Unavailable(what + ": write: " + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Reads one '\n'-terminated line (without the newline), byte by byte when `exact` so nothing after it is
// consumed; at most `max` bytes.
Result<std::string> ReadLine(int fd, Clock::time_point deadline, size_t max, const std::string& what) {
  std::string line;
  char buf[4096];
  while (true) {
    if (auto st = WaitFd(fd, POLLIN, deadline, what); !st.ok()) return st;
    ssize_t n = ::recv(fd, buf, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return Status::Unavailable(what + ": read: " + std::strerror(errno));
    if (n == 0) return Status::Unavailable(what + ": connection closed" + (line.empty() ? "" : " mid-line"));
    if (buf[0] == '\n') return line;
    line.push_back(buf[0]);
    if (line.size() > max)
      return Status::Unavailable(what + ": reply line longer than " + std::to_string(max));
    // Large replies (exec output) are read in bigger chunks once we know no handshake follows.
    if (max > 4096) {
      ssize_t m = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_PEEK);
      if (m > 0) {
        const void* nl = std::memchr(buf, '\n', static_cast<size_t>(m));
        size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - buf) : static_cast<size_t>(m);
        if (take > 0) {
          ssize_t got = ::recv(fd, buf, take, MSG_DONTWAIT);
          if (got > 0) line.append(buf, static_cast<size_t>(got));
        }
      }
    }
  }
}

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

}  // namespace

Result<int> ConnectVsock(const std::string& uds_path, uint32_t port, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  const std::string what = "vsock " + uds_path + " port " + std::to_string(port);
  sockaddr_un addr{};
  if (uds_path.size() >= sizeof(addr.sun_path))
    return Status::InvalidArgument(what + ": socket path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, uds_path.c_str(), uds_path.size() + 1);
  Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (s.fd < 0) return Status::Unavailable(what + ": socket: " + std::strerror(errno));
  if (::connect(s.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) {
      return Status::Unavailable(what + ": connect: " + std::strerror(errno));
    }
    if (auto st = WaitFd(s.fd, POLLOUT, deadline, what); !st.ok()) return st;
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return Status::Unavailable(what + ": connect: " + std::strerror(err));
  }
  if (auto st = WriteAll(s.fd, "CONNECT " + std::to_string(port) + "\n", deadline, what); !st.ok()) return st;
  auto line = ReadLine(s.fd, deadline, 64, what + ": handshake");
  if (!line.ok()) {
    if (line.status().code() == StatusCode::kUnavailable) {
      return Status::Unavailable(what +
                                 ": Firecracker closed the connection after CONNECT (is the guest agent "
                                 "listening on that vsock port?)");
    }
    return line.status();
  }
  if (line->rfind("OK ", 0) != 0)
    return Status::Unavailable(what + ": unexpected handshake reply '" + *line + "'");
  int flags = ::fcntl(s.fd, F_GETFL);
  ::fcntl(s.fd, F_SETFL, flags & ~O_NONBLOCK);
  return s.release();
}

}  // namespace fcwarm::firecracker
