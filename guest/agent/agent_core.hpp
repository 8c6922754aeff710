/// \file agent_core.hpp
/// \brief Guest agent request handling (protocol v1, docs/guest-protocol.md), independent of the transport.
///
/// Everything that touches the machine (hostname, network, RNG, clock, files, processes, sockets) goes
/// through `SystemOps`, so host tests can run every operation against a recording double.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
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
/// Default guest-side deadline of the `docker` op.
inline constexpr int64_t kDefaultDockerTimeoutMs = 30000;
/// Longest request target (path + query) the `docker` op accepts.
inline constexpr std::size_t kMaxHttpTargetBytes = 2048;
/// Longest HTTP response head (status line + headers) UnixHttp accepts.
inline constexpr std::size_t kMaxHttpHeadBytes = 65536;
inline constexpr std::string_view kDefaultDockerSocket = "/var/run/docker.sock";
/// Docker's default daemon configuration file (relative to AgentContext::root).
inline constexpr std::string_view kDockerDaemonJson = "/etc/docker/daemon.json";
/// The resolver configuration `identity` writes for `dns` (relative to AgentContext::root).
inline constexpr std::string_view kResolvConf = "/etc/resolv.conf";
/// Present while the image's init will still send dockerd a SIGHUP once it answers (relative to
/// AgentContext::root; guest/docker/fcwarm-init.sh). See the `docker` field of `identity`.
inline constexpr std::string_view kDockerReloadPendingMarker = "/run/fcwarm/dockerd-reload-pending";
/// Default and longest wait of `identity` for dockerd to answer and apply a new registry configuration.
inline constexpr int64_t kDefaultDockerReloadTimeoutMs = 5000;
/// Longest `docker.timeout_ms` of `identity`.
inline constexpr int64_t kMaxDockerReloadTimeoutMs = 60000;
/// Largest daemon.json the agent merges into.
inline constexpr std::size_t kMaxDaemonJsonBytes = 1 << 20;

/// \brief Where parked containers' launch channels live (relative to AgentContext::root): one directory per
/// parked container, holding the FIFOs `spec` and `ack` (docs/docker-runtime.md, "Parked containers").
inline constexpr std::string_view kParkedDir = "/run/fcwarm/parked/";
/// Default deadline of `launch` (for the launcher to be waiting, then for its answer).
inline constexpr int64_t kDefaultLaunchTimeoutMs = 5000;
/// Largest launch spec the `launch` op writes (the launcher's own limit is 256 KiB).
inline constexpr std::size_t kMaxLaunchSpecBytes = 128 * 1024;

/// \brief Outcome of SystemOps::DeliverLaunch.
struct LaunchOutcome {
  bool waiting = false;    ///< Probe: a launcher holds the spec FIFO open. Launch: the spec was written.
  bool exec_ok = false;    ///< Launch: the launcher's ack FIFO closed without a message (execve succeeded).
  std::string exec_error;  ///< Launch: the launcher's message when it could not start the command.
  bool timed_out = false;  ///< The deadline passed (before a launcher was waiting, or before its answer).
  std::string error;       ///< A system error (no such channel, ...); empty otherwise.
};

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

/// \brief A file read by SystemOps::ReadFile.
struct FileContent {
  bool exists = false;     ///< False when the path does not exist (then `error` is empty).
  std::string content;     ///< The bytes read (at most the requested maximum).
  bool truncated = false;  ///< The file is longer than the requested maximum.
  std::string error;       ///< Why an existing file could not be read; empty on success.
};

/// \brief A running process (SystemOps::FindProcesses).
struct ProcessEntry {
  int pid = 0;                    ///< Process id.
  std::vector<std::string> argv;  ///< Its command line (/proc/<pid>/cmdline split at NUL bytes).
};

/// \brief An HTTP response read by SystemOps::UnixHttp.
struct HttpResponse {
  int status = 0;           ///< Status code of the status line.
  std::string status_line;  ///< The status line without CRLF, e.g. "HTTP/1.0 404 Not Found".
  std::vector<std::pair<std::string, std::string>> headers;  ///< In order received; names as sent.
  std::string body;                                          ///< At most `max_body` bytes (see UnixHttp).
  bool truncated = false;  ///< The body was longer than `max_body` and was cut there.
  /// \brief Value of the first header called `name` (ASCII case-insensitive), or nullopt.
  std::optional<std::string> Header(std::string_view name) const;
};

/// \brief Outcome of SystemOps::UnixHttp: `response` when `error` is empty.
struct HttpExchange {
  /// Empty on success; otherwise starts with the socket path and names the step that failed, e.g.
  /// "/var/run/docker.sock: connect: No such file or directory".
  std::string error;
  bool timed_out = false;  ///< The deadline passed before the response was complete (`error` says where).
  HttpResponse response;
  bool ok() const { return error.empty(); }
};

/// \brief True if `method` is one of GET, POST, PUT, DELETE, HEAD.
bool ValidHttpMethod(std::string_view method);
/// \brief True if `target` is an acceptable request target for the `docker` op: starts with "/", at most
/// kMaxHttpTargetBytes, only printable ASCII other than space and '#'.
bool ValidHttpTarget(std::string_view target);
/// \brief Builds an HTTP/1.0 request with `Host: docker`. With a body: `Content-Type: application/json` and
/// `Content-Length`; without one, POST and PUT still get `Content-Length: 0`.
/// \param method A valid method (ValidHttpMethod).
/// \param target A valid target (ValidHttpTarget).
/// \param body The body, or nullopt for none.
std::string BuildHttpRequest(std::string_view method, std::string_view target,
                             const std::optional<std::string>& body);
/// \brief Parses a response head (status line and header lines, without the blank line that ends it).
/// \param head The bytes before "\r\n\r\n".
/// \param out Receives status, status_line and headers.
/// \return Empty on success, else why the head is unparsable.
std::string ParseHttpHead(std::string_view head, HttpResponse& out);

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
  /// \brief Reads at most `max_bytes` of a file (symlinks are followed).
  virtual FileContent ReadFile(const std::string& path, std::size_t max_bytes) = 0;
  /// \brief Replaces `path` atomically: a new file in the same directory (created with mode 0755 when
  /// missing, one level), written, fsync'ed, then renamed over `path` (a symlink at `path` is replaced, not
  /// followed) and the directory fsync'ed. Readers see the old or the new content, never a mix. \param path
  /// Absolute path. \param content The whole new content. \param mode Permission bits of the new file, e.g.
  /// 0644.
  virtual OpStatus ReplaceFile(const std::string& path, const std::string& content, unsigned mode) = 0;
  /// \brief Live (not zombie) processes whose /proc/<pid>/comm is `comm`, lowest pid first.
  virtual std::vector<ProcessEntry> FindProcesses(const std::string& comm) = 0;
  /// \brief kill(pid, signal).
  virtual OpStatus SendSignal(int pid, int signal) = 0;
  // --- processes and sockets ---
  virtual ProcessResult Run(const ProcessSpec& spec) = 0;
  /// \brief One HTTP exchange on a Unix stream socket (the `docker` op and the docker readiness check).
  ///
  /// Connects to `socket_path`, sends `request` as is (an HTTP/1.0 request, see BuildHttpRequest), reads the
  /// response until EOF or until `Content-Length` body bytes arrived, all within `timeout`. The body is cut
  /// at `max_body` bytes (reading stops there, `truncated`). A chunked response is an error (an HTTP/1.0
  /// client never gets one).
  /// \param socket_path Absolute path of the socket (symlinks are followed).
  /// \param request The complete request bytes.
  /// \param timeout Deadline for connect + send + the whole response.
  /// \param max_body Cap on the returned body.
  /// \return The response, or an error naming the socket and the step.
  virtual HttpExchange UnixHttp(const std::string& socket_path, const std::string& request,
                                std::chrono::milliseconds timeout, std::size_t max_body) = 0;
  /// \brief UnixHttp, with the body handed to `on_body` as it arrives instead of being collected (the
  /// `docker_start` op). The returned response has the status and headers and an empty body.
  ///
  /// The default implementation calls UnixHttp (capped at kMaxStreamBytes) and hands over the whole body at
  /// once; LinuxSystemOps streams.
  /// \param socket_path As UnixHttp.
  /// \param request As UnixHttp.
  /// \param timeout Deadline for connect + send + the whole response.
  /// \param on_head Called once with the parsed head, before any body bytes.
  /// \param on_body Called with each piece of the body, in order; returning false stops reading (the
  /// exchange then ends with error "stopped by the reader").
  virtual HttpExchange UnixHttpStream(const std::string& socket_path, const std::string& request,
                                      std::chrono::milliseconds timeout,
                                      const std::function<void(const HttpResponse&)>& on_head,
                                      const std::function<bool(std::string_view)>& on_body);
  /// \brief Hands a launch spec to a parked container's launcher through the FIFOs of `channel_dir` (the
  /// `launch` op). The default implementation does the real FIFO I/O (host tests run it against a launcher).
  ///
  /// Probe: opens `spec` for writing without blocking and closes it at once (the launcher ignores an empty
  /// spec); `waiting` tells whether a reader was there. Launch: opens `ack` for reading first, then `spec`
  /// for writing (retrying while no reader is there, until `timeout`), writes `spec_bytes`, closes it, and
  /// reads `ack` to EOF: empty means the launcher's execve() succeeded (the FIFO is close-on-exec there).
  /// \param channel_dir The channel directory (with the context's root).
  /// \param spec_bytes The spec (ignored for a probe).
  /// \param timeout Deadline of the whole exchange.
  /// \param probe Only check that a launcher is waiting.
  virtual LaunchOutcome DeliverLaunch(const std::string& channel_dir, const std::string& spec_bytes,
                                      std::chrono::milliseconds timeout, bool probe);
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
  FileContent ReadFile(const std::string& path, std::size_t max_bytes) override;
  OpStatus ReplaceFile(const std::string& path, const std::string& content, unsigned mode) override;
  std::vector<ProcessEntry> FindProcesses(const std::string& comm) override;
  OpStatus SendSignal(int pid, int signal) override;
  ProcessResult Run(const ProcessSpec& spec) override;
  HttpExchange UnixHttp(const std::string& socket_path, const std::string& request,
                        std::chrono::milliseconds timeout, std::size_t max_body) override;
  HttpExchange UnixHttpStream(const std::string& socket_path, const std::string& request,
                              std::chrono::milliseconds timeout,
                              const std::function<void(const HttpResponse&)>& on_head,
                              const std::function<bool(std::string_view)>& on_body) override;
};

/// Most `docker_start` jobs alive at once (running, or finished with bytes not yet read).
inline constexpr std::size_t kMaxDockerJobs = 8;
/// Unread body bytes a job keeps; beyond it the oldest are dropped (and counted in `dropped`).
inline constexpr std::size_t kMaxDockerJobBuffer = 4u << 20;
/// Most body bytes one `docker_read` reply carries.
inline constexpr std::size_t kMaxDockerReadBytes = 512u << 10;
/// Longest `wait_ms` of `docker_read`.
inline constexpr int64_t kMaxDockerReadWaitMs = 5000;
/// A job nobody read for this long is cancelled and forgotten.
inline constexpr int64_t kDockerJobIdleMs = 120000;

/// \brief The streaming Docker requests of the `docker_start` / `docker_read` / `docker_cancel` ops: each
/// runs on its own thread and keeps its unread body bytes for the next read.
///
/// Thread safety: all members may be called concurrently. The destructor cancels and joins every job.
class DockerJobs {
 public:
  DockerJobs();
  ~DockerJobs();
  DockerJobs(const DockerJobs&) = delete;
  DockerJobs& operator=(const DockerJobs&) = delete;
  /// \brief Opaque implementation.
  struct Impl;
  /// \brief The implementation (used by the op handlers).
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// \brief Everything a request handler needs. `sys` must outlive the context.
struct AgentContext {
  SystemOps* sys = nullptr;  ///< The machine. Must not be null.
  /// Prefix for the guest paths the agent edits (/etc/hostname, /var/lib/...). Default: "" (the real root).
  std::string root;
  /// The jobs of `docker_start`, shared by every copy of the context (every channel).
  std::shared_ptr<DockerJobs> jobs = std::make_shared<DockerJobs>();
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
