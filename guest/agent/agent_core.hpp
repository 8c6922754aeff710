/// \file agent_core.hpp
/// \brief Guest agent request handling (protocol v1, docs/guest-protocol.md), independent of the transport.
///
/// Everything that touches the machine (hostname, network, RNG, clock, files, processes) goes through
/// `SystemOps`, so host tests can run every operation against a recording double.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fcwarm::agent {

inline constexpr std::string_view kAgentVersion = "0.1.0";
inline constexpr int kProtocolVersion = 1;
/// Longest accepted request line in bytes, without the newline.
inline constexpr std::size_t kMaxLineBytes = 65536;
/// Cap on each captured exec stream.
inline constexpr std::size_t kMaxStreamBytes = 1 << 20;
inline constexpr int64_t kDefaultExecTimeoutMs = 10000;
inline constexpr int64_t kMaxExecTimeoutMs = 600000;

/// \brief Outcome of a system call wrapper: empty `error` means success.
struct OpStatus {
  std::string error;  ///< Human-readable reason; empty on success.
  bool ok() const { return error.empty(); }
  static OpStatus Ok() { return {}; }
  static OpStatus Fail(std::string why) { return OpStatus{std::move(why)}; }
};

/// \brief A process to run (exec and the `command` readiness check).
struct ProcessSpec {
  std::vector<std::string> argv;  ///< argv[0] is looked up with execvp.
  std::string stdin_data;         ///< Bytes written to the child's stdin (then closed).
  std::chrono::milliseconds timeout{kDefaultExecTimeoutMs};
  std::size_t max_output = kMaxStreamBytes;  ///< Per stream cap.
};

/// \brief What a process did.
struct ProcessResult {
  bool started = false;    ///< False when fork/exec failed (`error` says why).
  bool timed_out = false;  ///< True when the process group was killed at the deadline.
  int exit_code = 0;       ///< Exit status, or -signal when killed by a signal.
  std::string out;         ///< Captured stdout (at most max_output bytes).
  std::string err;         ///< Captured stderr (at most max_output bytes).
  bool truncated = false;  ///< A stream exceeded max_output.
  std::string error;       ///< Why the process could not be started.
};

/// \brief Runs a process with fork/execvp: own process group, stdin from `spec.stdin_data`, capped
/// outputs, SIGKILL to the group at the deadline. Never uses a shell.
/// \param spec What to run.
/// \return What happened.
ProcessResult RunProcess(const ProcessSpec& spec);

/// \brief The machine as the agent sees it. The real implementation is `LinuxSystemOps`.
///
/// Thread safety: implementations must allow concurrent calls (the agent serves several channels).
class SystemOps {
 public:
  virtual ~SystemOps() = default;
  // --- reads ---
  /// \brief Contents of /proc/sys/kernel/random/boot_id without the newline.
  virtual std::string BootId() = 0;
  /// \brief Time since boot (CLOCK_BOOTTIME).
  virtual std::chrono::milliseconds Uptime() = 0;
  /// \brief Current hostname.
  virtual std::string Hostname() = 0;
  /// \brief True if `path` exists (any file type).
  virtual bool PathExists(const std::string& path) = 0;
  // --- identity ---
  virtual OpStatus SetHostname(const std::string& name) = 0;
  /// \brief Writes a whole file (used for /etc/hostname); fails if it cannot be written.
  virtual OpStatus WriteFile(const std::string& path, const std::string& content) = 0;
  /// \brief Link down, set MAC, link up. `mac` is 6 bytes.
  virtual OpStatus SetMac(const std::string& iface, const std::vector<uint8_t>& mac) = 0;
  /// \brief Flushes the IPv4 addresses of `iface` and adds `addr`/`prefix` (network byte order).
  virtual OpStatus SetIpv4(const std::string& iface, uint32_t addr_be, int prefix) = 0;
  /// \brief Replaces the IPv4 default route by one via `gateway_be` on `iface`.
  virtual OpStatus SetDefaultRoute(const std::string& iface, uint32_t gateway_be) = 0;
  /// \brief RNDADDENTROPY with 8*len bits, then RNDRESEEDCRNG.
  virtual OpStatus AddEntropy(const std::string& bytes) = 0;
  /// \brief clock_settime(CLOCK_REALTIME).
  virtual OpStatus SetWallClock(int64_t ns_since_epoch) = 0;
  // --- quiesce ---
  virtual void Sync() = 0;
  /// \brief Deletes every neighbour (ARP/NDP) entry that is not permanent.
  virtual OpStatus FlushNeighbours() = 0;
  /// \brief Regular files directly inside `dir` (full paths); empty if it does not exist.
  virtual std::vector<std::string> ListFiles(const std::string& dir) = 0;
  /// \brief unlink(); a missing file is not an error.
  virtual OpStatus RemoveFile(const std::string& path) = 0;
  // --- processes and sockets ---
  virtual ProcessResult Run(const ProcessSpec& spec) = 0;
  /// \brief `GET /_ping` on a Unix socket; returns (ready, detail).
  virtual std::pair<bool, std::string> DockerPing(const std::string& socket_path,
                                                  std::chrono::milliseconds timeout) = 0;
};

/// \brief The real Linux implementation (syscalls, netlink, ioctl).
class LinuxSystemOps final : public SystemOps {
 public:
  std::string BootId() override;
  std::chrono::milliseconds Uptime() override;
  std::string Hostname() override;
  bool PathExists(const std::string& path) override;
  OpStatus SetHostname(const std::string& name) override;
  OpStatus WriteFile(const std::string& path, const std::string& content) override;
  OpStatus SetMac(const std::string& iface, const std::vector<uint8_t>& mac) override;
  OpStatus SetIpv4(const std::string& iface, uint32_t addr_be, int prefix) override;
  OpStatus SetDefaultRoute(const std::string& iface, uint32_t gateway_be) override;
  OpStatus AddEntropy(const std::string& bytes) override;
  OpStatus SetWallClock(int64_t ns_since_epoch) override;
  void Sync() override;
  OpStatus FlushNeighbours() override;
  std::vector<std::string> ListFiles(const std::string& dir) override;
  OpStatus RemoveFile(const std::string& path) override;
  ProcessResult Run(const ProcessSpec& spec) override;
  std::pair<bool, std::string> DockerPing(const std::string& socket_path,
                                          std::chrono::milliseconds timeout) override;
};

/// \brief Everything a request handler needs. `sys` must outlive the context.
struct AgentContext {
  SystemOps* sys = nullptr;  ///< The machine. Must not be null.
  /// Prefix for the guest paths the agent edits (/etc/hostname, /var/lib/...). Default: "" (the real root).
  std::string root;
};

/// \brief Handles one request line (without its newline) and returns the reply line (without newline).
///
/// Never throws; malformed input yields an error reply. Thread safety: safe to call concurrently if
/// `ctx.sys` is.
/// \param line The request, at most kMaxLineBytes (longer lines get `too_large`).
/// \param ctx The machine.
/// \return One JSON object.
std::string HandleRequestLine(std::string_view line, AgentContext& ctx);

/// \brief The reply for a request line that exceeded kMaxLineBytes (id unknown).
std::string TooLargeReply();

/// \brief Splits a byte stream into request lines, discarding lines longer than a limit.
///
/// Thread safety: none (one per connection).
class LineAssembler {
 public:
  /// \brief One event produced by Feed.
  struct Event {
    bool too_large = false;  ///< A line exceeded the limit and was dropped up to its newline.
    std::string line;        ///< The complete line (trailing "\r" removed) when !too_large.
  };
  /// \param max_line Longest line kept. Default: kMaxLineBytes.
  explicit LineAssembler(std::size_t max_line = kMaxLineBytes) : max_line_(max_line) {}
  /// \brief Adds bytes; returns the events completed by them, in order.
  std::vector<Event> Feed(std::string_view bytes);
  /// \brief Forgets a partial line (the peer went away).
  void Reset() {
    buf_.clear();
    discarding_ = false;
  }

 private:
  std::size_t max_line_;
  std::string buf_;
  bool discarding_ = false;
};

/// \brief Standard base64 (RFC 4648) with padding.
std::string Base64Encode(std::string_view data);
/// \brief Strict decoder: padding required, no whitespace. Returns nullopt on invalid input.
std::optional<std::string> Base64Decode(std::string_view text);

}  // namespace fcwarm::agent
