// Private: a GuestChannel speaking the agent protocol (docs/guest-protocol.md) over a connected stream
// socket.
//
// The transport is abstracted as a connector that returns a fresh, connected, blocking or non-blocking stream
// fd positioned at the start of the protocol: QEMU's virtio-serial chardev socket (ConnectUnixStream) or
// Firecracker's vsock socket after its "CONNECT <port>\n" / "OK <n>\n" handshake (firecracker::ConnectVsock).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::guest {

/// Opens a fresh stream to the guest agent within `timeout`; the caller owns the returned fd (close-on-exec).
using Connector = std::function<Result<int>(std::chrono::milliseconds timeout)>;

/// Tuning of a StreamGuestChannel.
struct StreamChannelOptions {
  /// Longest reply line accepted; a longer one fails the call and drops the connection.
  size_t max_reply_bytes = 8u << 20;
  /// Keep the connection open between calls (virtio-serial: there is only one host end). When false, each
  /// call uses a fresh connection (vsock).
  bool persistent = true;
  /// Added to error messages, e.g. "vm 1234: ".
  std::string label;
  /// Called to enrich an error when the transport fails (e.g. "QEMU exited with signal 9; console: ...").
  /// May be empty. Must not call back into the channel.
  std::function<std::string()> diagnose;
};

/// Connects to a Unix stream socket, retrying ENOENT/ECONNREFUSED until `timeout`.
Result<int> ConnectUnixStream(const std::string& path, std::chrono::milliseconds timeout);

/// Makes a GuestChannel over streams from `connect`. Calls are serialized by a mutex; each call has a
/// deadline (poll-based), replies are matched by id (stale replies of earlier timed-out calls are skipped), a
/// failed or timed-out call drops the connection and the next call reconnects.
std::unique_ptr<GuestChannel> MakeStreamGuestChannel(Connector connect, StreamChannelOptions options = {});

}  // namespace fcwarm::guest
