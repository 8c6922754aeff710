// Private: deadline-bounded line I/O on a stream socket (shared by the guest channel and the QMP client).
#pragma once

#include <chrono>
#include <string>

#include "fcwarm/status.hpp"

namespace fcwarm::guest {

using Clock = std::chrono::steady_clock;

/// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

/// Milliseconds left until `deadline` (0 when past), for poll().
int MsLeft(Clock::time_point deadline);

/// A buffered line reader/writer over a connected stream socket. Not thread-safe.
class LineStream {
 public:
  LineStream() = default;
  explicit LineStream(int fd) : fd_(fd) {}
  bool connected() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  void Close() {
    fd_.Reset();
    buf_.clear();
  }
  /// Writes all of `data` before `deadline`. `ancillary_fd` >= 0 is passed with SCM_RIGHTS on the first byte.
  Status WriteAll(const std::string& data, Clock::time_point deadline, int ancillary_fd = -1);
  /// Reads one line (without "\n" and a trailing "\r"); lines longer than `max` fail with ResourceExhausted.
  /// EOF is Unavailable, the deadline DeadlineExceeded. The buffer never holds more than `max` + 1 bytes:
  /// reads are sized so that a line without an end is detected before more of it is taken in.
  Result<std::string> ReadLine(Clock::time_point deadline, size_t max);
  /// The most bytes the buffer held since construction (for tests and limits).
  size_t peak_buffered() const { return peak_; }

 private:
  UniqueFd fd_;
  std::string buf_;
  size_t peak_ = 0;
};

}  // namespace fcwarm::guest
