// Private: host side of Firecracker's vsock device (a Unix socket speaking "CONNECT <port>\n" / "OK <n>\n").
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::firecracker {

/// Connects to Firecracker's host-side vsock socket `uds_path` and asks for guest port `port`.
/// Returns a connected, blocking, close-on-exec stream fd positioned right after the "OK <n>\n" line, ready
/// for the agent protocol. The caller owns the fd. Errors: Unavailable (no socket, refused, nothing listening
/// on the guest port), DeadlineExceeded.
Result<int> ConnectVsock(const std::string& uds_path, uint32_t port, std::chrono::milliseconds timeout);

}  // namespace fcwarm::firecracker
