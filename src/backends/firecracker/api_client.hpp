// Private: a minimal client for Firecracker's HTTP API over its Unix socket (libcurl).
#pragma once

#include <chrono>
#include <string>

#include "fcwarm/status.hpp"

namespace fcwarm::firecracker {

/// An answer with a 2xx status.
struct ApiResponse {
  long http_status = 0;
  std::string body;
};

/// Talks to one Firecracker API socket. Each call uses its own connection and its own deadline.
/// Thread safety: Call() may be used concurrently (no shared handle).
class ApiClient {
 public:
  explicit ApiClient(std::string socket_path) : socket_path_(std::move(socket_path)) {}
  const std::string& socket_path() const { return socket_path_; }

  /// Sends `method path` with an optional JSON body. Errors: 4xx → FailedPrecondition with the
  /// `fault_message`; 5xx and connection failures → Unavailable; no answer in time → DeadlineExceeded.
  /// Every message starts with "METHOD path".
  Result<ApiResponse> Call(const std::string& method, const std::string& path, const std::string& body,
                           std::chrono::milliseconds timeout) const;

 private:
  std::string socket_path_;
};

/// Extracts `fault_message` from an error body; falls back to the raw (shortened) body.
std::string FaultMessage(const std::string& body);

}  // namespace fcwarm::firecracker
