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

namespace {

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string B64Encode(const std::string& in) {
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {kB64[v >> 18], kB64[(v >> 12) & 63], kB64[(v >> 6) & 63], kB64[v & 63]};
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {kB64[v >> 18], kB64[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {kB64[v >> 18], kB64[(v >> 12) & 63], kB64[(v >> 6) & 63], '='};
  }
  return out;
}

std::string B64Decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const char* p = std::strchr(kB64, c);
    if (c == '=' || c == '\0' || !p) continue;
    acc = (acc << 6) | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::string Str(const json::object& o, const char* k) {
  const auto* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}
int64_t Int(const json::object& o, const char* k) {
  const auto* v = o.if_contains(k);
  return v && v->is_int64() ? v->as_int64()
                            : (v && v->is_uint64() ? static_cast<int64_t>(v->as_uint64()) : 0);
}
bool Bool(const json::object& o, const char* k) {
  const auto* v = o.if_contains(k);
  return v && v->is_bool() && v->as_bool();
}

class StreamGuestChannel : public GuestChannel {
 public:
  explicit StreamGuestChannel(StreamConnector connect) : connect_(std::move(connect)) {}

  Result<GuestInfo> Ping(std::chrono::milliseconds timeout) override {
    auto r = Call("ping", {}, timeout);
    if (!r.ok()) return r.status();
    GuestInfo g;
    g.agent_version = Str(*r, "agent_version");
    g.protocol = static_cast<int>(Int(*r, "protocol"));
    g.boot_id = Str(*r, "boot_id");
    g.uptime_ms = Int(*r, "uptime_ms");
    g.hostname = Str(*r, "hostname");
    if (g.protocol != kGuestProtocolVersion) {
      return Status::FailedPrecondition("guest agent speaks protocol " + std::to_string(g.protocol) +
                                        ", expected " + std::to_string(kGuestProtocolVersion));
    }
    return g;
  }

  Result<IdentityResult> SetIdentity(const IdentityRequest& req, std::chrono::milliseconds timeout) override {
    json::object a;
    if (!req.hostname.empty()) a["hostname"] = req.hostname;
    if (!req.iface.empty()) a["iface"] = req.iface;
    if (!req.mac.empty()) a["mac"] = req.mac;
    if (!req.ip_cidr.empty()) a["ip_cidr"] = req.ip_cidr;
    if (!req.gateway.empty()) a["gateway"] = req.gateway;
    if (!req.entropy.empty()) a["entropy_b64"] = B64Encode(req.entropy);
    if (req.wall_clock_ns != 0) a["wall_clock_ns"] = req.wall_clock_ns;
    auto r = Call("identity", std::move(a), timeout);
    if (!r.ok()) return r.status();
    IdentityResult out;
    out.hostname = Str(*r, "hostname");
    out.mac = Str(*r, "mac");
    out.ip_cidr = Str(*r, "ip_cidr");
    out.entropy_bytes = Int(*r, "entropy_bytes");
    out.clock_set = Bool(*r, "clock_set");
    return out;
  }

  Result<RuntimeReadiness> RuntimeReady(const RuntimeCheck& check,
                                        std::chrono::milliseconds timeout) override {
    json::object c{{"kind", check.kind}};
    if (check.kind == "file") c["path"] = check.path;
    if (check.kind == "docker") c["socket"] = check.path.empty() ? "/var/run/docker.sock" : check.path;
    if (check.kind == "command") {
      json::array argv;
      for (const auto& s : check.argv) argv.emplace_back(s);
      c["argv"] = std::move(argv);
    }
    auto r = Call("runtime_ready", json::object{{"check", std::move(c)}}, timeout);
    if (!r.ok()) return r.status();
    return RuntimeReadiness{Bool(*r, "ready"), Str(*r, "detail")};
  }

  Status Quiesce(std::chrono::milliseconds timeout) override { return Call("quiesce", {}, timeout).status(); }

  Result<ExecResult> Exec(const ExecRequest& req, std::chrono::milliseconds timeout) override {
    json::array argv;
    for (const auto& s : req.argv) argv.emplace_back(s);
    json::object a{{"argv", std::move(argv)}, {"timeout_ms", req.timeout.count()}};
    if (!req.stdin_data.empty()) a["stdin_b64"] = B64Encode(req.stdin_data);
    auto r = Call("exec", std::move(a), timeout);
    if (!r.ok()) return r.status();
    ExecResult out;
    out.exit_code = static_cast<int>(Int(*r, "exit_code"));
    out.stdout_data = B64Decode(Str(*r, "stdout_b64"));
    out.stderr_data = B64Decode(Str(*r, "stderr_b64"));
    out.truncated = Bool(*r, "truncated");
    return out;
  }

 private:
  Result<json::object> Call(const char* op, json::object args, std::chrono::milliseconds timeout) {
    std::lock_guard<std::mutex> lock(mu_);
    auto deadline = Clock::now() + timeout;
    const std::string what = std::string("guest agent '") + op + "'";
    auto fd = connect_(timeout);
    if (!fd.ok()) return fd.status().WithContext(what);
    Fd s(*fd);
    int64_t id = ++next_id_;
    args["v"] = kGuestProtocolVersion;
    args["id"] = id;
    args["op"] = op;
    if (auto st = WriteAll(s.fd, json::serialize(args) + "\n", deadline, what); !st.ok()) return st;
    auto line = ReadLine(s.fd, deadline, 8u << 20, what);
    if (!line.ok()) return line.status();
    boost::system::error_code ec;
    auto v = json::parse(*line, ec);
    if (ec || !v.is_object()) return Status::Unavailable(what + ": malformed reply");
    const auto& o = v.as_object();
    if (Bool(o, "ok")) {
      const auto* res = o.if_contains("result");
      return res && res->is_object() ? res->as_object() : json::object{};
    }
    const auto* err = o.if_contains("error");
    std::string code = "failed", msg;
    if (err && err->is_object()) {
      code = Str(err->as_object(), "code");
      msg = Str(err->as_object(), "message");
    }
    std::string text = what + ": " + code + ": " + msg;
    if (code == "timeout") return Status::DeadlineExceeded(text);
    if (code == "bad_request" || code == "too_large" || code == "unknown_op")
      return Status::InvalidArgument(text);
    if (code == "unsupported_version") return Status::FailedPrecondition(text);
    return Status::Unavailable(text);
  }

  StreamConnector connect_;
  std::mutex mu_;
  int64_t next_id_ = 0;
};

}  // namespace

std::unique_ptr<GuestChannel> MakeStreamGuestChannel(StreamConnector connect) {
  return std::make_unique<StreamGuestChannel>(std::move(connect));
}

}  // namespace fcwarm::firecracker
