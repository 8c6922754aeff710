#include "guest/line_stream.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace fcwarm::guest {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int MsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  if (left > 1000000000) return 1000000000;
  return static_cast<int>(left);
}

namespace {

Status WaitFd(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, MsLeft(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::Unavailable(std::string("poll: ") + std::strerror(errno));
    if (r == 0) return Status::DeadlineExceeded("timed out");
    return Status::Ok();  // readable, writable, HUP or ERR: the next read/write tells which
  }
}

}  // namespace

Status LineStream::WriteAll(const std::string& data, Clock::time_point deadline, int ancillary_fd) {
  if (!fd_.valid()) return Status::Unavailable("not connected");
  size_t off = 0;
  bool fd_sent = ancillary_fd < 0;
  while (off < data.size()) {
    if (auto st = WaitFd(fd_.get(), POLLOUT, deadline); !st.ok()) return st;
    ssize_t n;
    if (!fd_sent) {
      iovec iov{const_cast<char*>(data.data() + off), data.size() - off};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &ancillary_fd, sizeof(int));
      n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) fd_sent = true;
    } else {
      n = ::send(fd_.get(), data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return Status::Unavailable(std::string("write: ") + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<std::string> LineStream::ReadLine(Clock::time_point deadline, size_t max) {
  if (!fd_.valid()) return Status::Unavailable("not connected");
  size_t scanned = 0;
  while (true) {
    auto nl = buf_.find('\n', scanned);
    if (nl != std::string::npos) {
      if (nl > max)
        return Status::ResourceExhausted("reply line longer than " + std::to_string(max) + " bytes");
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    scanned = buf_.size();
    if (buf_.size() > max)
      return Status::ResourceExhausted("reply line longer than " + std::to_string(max) + " bytes");
    if (auto st = WaitFd(fd_.get(), POLLIN, deadline); !st.ok()) return st;
    char chunk[65536];
    // Never more than max + 1 bytes in the buffer: enough to tell that a line is too long.
    const size_t room = max - buf_.size();
    const size_t want = room >= sizeof(chunk) ? sizeof(chunk) : room + 1;
    ssize_t n = ::recv(fd_.get(), chunk, want, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return Status::Unavailable(std::string("read: ") + std::strerror(errno));
    if (n == 0) return Status::Unavailable(buf_.empty() ? "connection closed" : "connection closed mid-line");
    buf_.append(chunk, static_cast<size_t>(n));
    peak_ = std::max(peak_, buf_.size());
  }
}

}  // namespace fcwarm::guest
