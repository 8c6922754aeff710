// Private: a GuestChannel speaking the agent protocol (docs/guest-protocol.md) over a connected stream
// socket.
//
// The transport is abstracted as a connector that returns a fresh, connected, blocking or non-blocking stream
// fd positioned at the start of the protocol: QEMU's virtio-serial chardev socket (ConnectUnixStream) or
// Firecracker's vsock socket after its "CONNECT <port>\n" / "OK <n>\n" handshake (firecracker::ConnectVsock).
#pragma once

#include <atomic>
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

/// What a StreamGuestChannel held at most, and how often its peer broke the protocol (tests, limits).
struct StreamChannelStats {
  std::atomic<size_t> peak_line_bytes{0};    ///< most bytes the line buffer held (at most max_reply_bytes + 1)
  std::atomic<size_t> peak_decode_bytes{0};  ///< most bytes one decoded reply held (at most max_decode_bytes)
  std::atomic<int> violations{0};            ///< protocol violations seen (the first one breaks the channel)
};

/// Tuning of a StreamGuestChannel. The limits are the host's side of docs/guest-protocol.md, "Limits".
struct StreamChannelOptions {
  /// Longest reply line accepted; a longer one is a protocol violation.
  size_t max_reply_bytes = 8u << 20;
  /// Memory one reply may take once decoded (JSON values, strings); more is a protocol violation. Legitimate
  /// replies need about their own size.
  size_t max_decode_bytes = 16u << 20;
  /// Lines a call skips that answer no outstanding request (text that is not JSON, a reply without an integer
  /// id, a reply to an id that is not outstanding); one more is a protocol violation. Late replies of earlier
  /// calls that ended without theirs (timed out, connection dropped) are skipped without counting.
  int max_unsolicited_lines = 16;
  /// Keep the connection open between calls (virtio-serial: there is only one host end). When false, each
  /// call uses a fresh connection (vsock).
  bool persistent = true;
  /// Added to error messages, e.g. "vm 1234: ".
  std::string label;
  /// Called to enrich an error when the transport fails (e.g. "QEMU exited with signal 9; console: ...").
  /// May be empty. Must not call back into the channel.
  std::function<std::string()> diagnose;
  /// Updated when set (tests). May be shared by several channels.
  std::shared_ptr<StreamChannelStats> stats;
};

/// Connects to a Unix stream socket, retrying ENOENT/ECONNREFUSED until `timeout`.
Result<int> ConnectUnixStream(const std::string& path, std::chrono::milliseconds timeout);

/// Makes a GuestChannel over streams from `connect`. Calls are serialized by a mutex; each call has a
/// deadline that includes waiting for the mutex and connecting (poll-based), replies are matched by id (late
/// replies of earlier calls that ended without theirs are skipped), a failed call drops the connection and the
/// next call reconnects (a timed-out one keeps it: its reply is skipped when it comes).
///
/// The guest is not trusted (docs/guest-protocol.md, "Limits"): a reply line over `max_reply_bytes`, a reply
/// that needs more than `max_decode_bytes` to decode, more than `max_unsolicited_lines` lines that answer no
/// outstanding request, or a malformed reply (neither a result nor an error object, invalid base64, a missing
/// required field) is a protocol violation: the call returns DataLoss naming it, the connection is closed, and
/// every later call returns DataLoss at once without talking to the guest again.
std::unique_ptr<GuestChannel> MakeStreamGuestChannel(Connector connect, StreamChannelOptions options = {});

}  // namespace fcwarm::guest
