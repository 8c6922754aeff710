// Private: a minimal QMP client (QEMU Machine Protocol over a Unix socket) with per-command deadlines.
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "guest/line_stream.hpp"

namespace fcwarm::qemu {

/// One QMP session: greeting, `qmp_capabilities`, then commands matched to replies by id. Asynchronous events
/// read while waiting for a reply are kept (events()). Not thread-safe: the owning Vm serializes calls.
class QmpClient {
 public:
  /// Connects to `path` (retrying while the socket does not exist yet), reads the greeting and negotiates
  /// capabilities, all before `deadline`.
  Status Connect(const std::string& path, guest::Clock::time_point deadline);
  bool connected() const { return stream_.connected(); }
  void Close() { stream_.Close(); }

  /// Runs `command` with `arguments` (null for none); returns the `return` member. A QMP `error` is mapped to
  /// FailedPrecondition with QEMU's class and description; a closed socket to Unavailable; the deadline to
  /// DeadlineExceeded. `pass_fd` >= 0 is sent with the command (SCM_RIGHTS), e.g. for `getfd`.
  Result<boost::json::value> Execute(const std::string& command, boost::json::value arguments,
                                     std::chrono::milliseconds timeout, int pass_fd = -1);

  /// Events received so far (each the whole event object), oldest first.
  const std::vector<boost::json::object>& events() const { return events_; }

 private:
  Result<boost::json::object> ReadMessage(guest::Clock::time_point deadline);
  guest::LineStream stream_;
  std::vector<boost::json::object> events_;
  int64_t next_id_ = 1;
};

}  // namespace fcwarm::qemu
