#include "guest/stream_channel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <thread>

#include "guest/line_stream.hpp"
#include "util/base64.hpp"

namespace fcwarm::guest {
namespace json = boost::json;

namespace {

constexpr size_t kMaxRequestLine = 65536;     // docs/guest-protocol.md: longer request lines are refused
constexpr size_t kMaxDockerPathBytes = 2048;  // docs/guest-protocol.md, op docker
constexpr int64_t kMaxGuestTimeoutMs = 600000;

bool ValidDockerMethod(const std::string& m) {
  return m == "GET" || m == "POST" || m == "PUT" || m == "DELETE" || m == "HEAD";
}

// Starts with "/", at most kMaxDockerPathBytes, printable ASCII without space and '#' (so nothing can end the
// request line or add a header).
bool ValidDockerPath(const std::string& p) {
  if (p.empty() || p[0] != '/' || p.size() > kMaxDockerPathBytes) return false;
  for (char c : p) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '#') return false;
  }
  return true;
}

// Lenient on purpose (unlike util::Base64Decode): padding and line breaks are skipped.
std::optional<std::string> B64Decode(std::string_view in) {
  std::string out;
  out.reserve(in.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    int v = util::Base64Value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::string Str(const json::object& o, const char* k) {
  const auto* f = o.if_contains(k);
  return f && f->is_string() ? std::string(f->as_string()) : std::string();
}

// An integer field of a reply; 0 when missing, not a number, or a number outside int64 (the guest is not
// trusted: converting such a double, e.g. 1e300, would be undefined behaviour).
int64_t Int(const json::object& o, const char* k) {
  const auto* f = o.if_contains(k);
  if (!f) return 0;
  if (f->is_int64()) return f->as_int64();
  if (f->is_uint64()) return static_cast<int64_t>(f->as_uint64());
  if (f->is_double()) {
    const double d = f->as_double();
    // 2^63 is exactly representable; every double below it (and >= -2^63) converts.
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0) return static_cast<int64_t>(d);
  }
  return 0;
}

bool Bool(const json::object& o, const char* k) {
  const auto* f = o.if_contains(k);
  return f && f->is_bool() && f->as_bool();
}

// Counts what one decoded reply allocates and refuses to go beyond a cap, so that a reply line cannot make
// the host hold many times its size (a line of "[0,0,0,...]" becomes millions of JSON values).
class CappedResource final : public json::memory_resource {
 public:
  // `peak` receives the most it held at once (shared: the values it allocated may outlive the caller's frame,
  // and the resource with them; make_shared_resource wraps it, so it cannot be reached through the pointer).
  CappedResource(size_t cap, std::shared_ptr<size_t> peak) : cap_(cap), peak_(std::move(peak)) {}

 private:
  void* do_allocate(size_t n, size_t align) override {
    if (n > cap_ - used_) throw std::bad_alloc();
    void* p = upstream_->allocate(n, align);
    used_ += n;
    *peak_ = std::max(*peak_, used_);
    return p;
  }
  void do_deallocate(void* p, size_t n, size_t align) override {
    upstream_->deallocate(p, n, align);
    used_ -= n;
  }
  bool do_is_equal(const json::memory_resource& o) const noexcept override { return this == &o; }
  size_t cap_;
  size_t used_ = 0;
  std::shared_ptr<size_t> peak_;
  json::memory_resource* upstream_ = json::storage_ptr().get();  // the default resource (new/delete)
};

// The start of a line the guest sent, safe to put into a message and a log.
std::string Excerpt(std::string_view line) {
  std::string out = "\"";
  for (char c : line.substr(0, 64)) {
    auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f && c != '"' && c != '\\') ? c : '?';
  }
  out += line.size() > 64 ? "\"... (" + std::to_string(line.size()) + " bytes)" : "\"";
  return out;
}

void RaisePeak(std::atomic<size_t>& peak, size_t v) {
  size_t cur = peak.load();
  while (cur < v && !peak.compare_exchange_weak(cur, v)) {
  }
}

// An error the agent reported: its code and message are the guest's words, so they are cut to a length that
// fits a record and a log line, without control characters.
Status AgentError(const std::string& code, const std::string& message, const std::string& op) {
  constexpr size_t kMaxText = 4096;
  std::string said = code.substr(0, 64) + ": " + message.substr(0, kMaxText);
  if (message.size() > kMaxText) said += "...";
  for (auto& c : said) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  std::string text = "guest agent " + op + ": " + said;
  if (code == "timeout") return Status::DeadlineExceeded(text);
  if (code == "failed") return Status::Unavailable(text);
  if (code == "unsupported_version" || code == "unknown_op" || code == "not_waiting")
    return Status::FailedPrecondition(text);
  return Status::InvalidArgument(text);
}

class StreamGuestChannel final : public GuestChannel {
 public:
  StreamGuestChannel(Connector connect, StreamChannelOptions options)
      : connect_(std::move(connect)), options_(std::move(options)) {}

  Result<GuestInfo> Ping(std::chrono::milliseconds timeout) override {
    auto r = Call("ping", json::object{}, timeout);
    if (!r.ok()) return r.status();
    GuestInfo info;
    info.agent_version = Str(*r, "agent_version");
    info.protocol = static_cast<int>(Int(*r, "protocol"));
    info.boot_id = Str(*r, "boot_id");
    info.uptime_ms = Int(*r, "uptime_ms");
    info.hostname = Str(*r, "hostname");
    return info;
  }

  Result<IdentityResult> SetIdentity(const IdentityRequest& req, std::chrono::milliseconds timeout) override {
    json::object a;
    if (!req.hostname.empty()) a["hostname"] = req.hostname;
    if (!req.iface.empty()) a["iface"] = req.iface;
    if (!req.mac.empty()) a["mac"] = req.mac;
    if (!req.ip_cidr.empty()) a["ip_cidr"] = req.ip_cidr;
    if (!req.gateway.empty()) a["gateway"] = req.gateway;
    if (!req.entropy.empty()) a["entropy_b64"] = util::Base64Encode(req.entropy);
    if (req.wall_clock_ns != 0) a["wall_clock_ns"] = req.wall_clock_ns;
    auto strings = [](const std::vector<std::string>& v) {
      json::array arr;
      for (const auto& s : v) arr.emplace_back(s);
      return arr;
    };
    if (!req.dns.empty()) a["dns"] = strings(req.dns);
    if (req.docker) {
      // The agent waits for dockerd to apply the settings; leave it room to answer before our deadline.
      const int64_t guest_ms =
          timeout.count() > 2000 ? timeout.count() - 1000 : std::max<int64_t>(1, timeout.count() / 2);
      a["docker"] = json::object{{"registry_mirrors", strings(req.docker->registry_mirrors)},
                                 {"insecure_registries", strings(req.docker->insecure_registries)},
                                 {"timeout_ms", std::min<int64_t>(guest_ms, 60000)}};
    }
    auto r = Call("identity", std::move(a), timeout);
    if (!r.ok()) return r.status();
    IdentityResult out;
    out.hostname = Str(*r, "hostname");
    out.mac = Str(*r, "mac");
    out.ip_cidr = Str(*r, "ip_cidr");
    out.entropy_bytes = Int(*r, "entropy_bytes");
    out.clock_set = Bool(*r, "clock_set");
    if (auto d = r->find("docker"); d != r->end() && d->value().is_object())
      out.docker_state = Str(d->value().get_object(), "dockerd");
    return out;
  }

  Result<RuntimeReadiness> RuntimeReady(const RuntimeCheck& check,
                                        std::chrono::milliseconds timeout) override {
    json::object c{{"kind", check.kind}};
    // Leave the agent room to answer before the host-side deadline.
    const int64_t guest_ms = timeout.count() > 1000 ? timeout.count() - 500 : timeout.count();
    if (check.kind == "file") c["path"] = check.path;
    if (check.kind == "docker") {
      c["socket"] = check.path.empty() ? "/var/run/docker.sock" : check.path;
      c["timeout_ms"] = guest_ms;
    }
    if (check.kind == "command") {
      json::array argv;
      for (const auto& s : check.argv) argv.emplace_back(s);
      c["argv"] = std::move(argv);
      c["timeout_ms"] = guest_ms;
    }
    auto r = Call("runtime_ready", json::object{{"check", std::move(c)}}, timeout);
    if (!r.ok()) return r.status();
    RuntimeReadiness out;
    out.ready = Bool(*r, "ready");
    out.detail = Str(*r, "detail");
    return out;
  }

  Status Quiesce(std::chrono::milliseconds timeout) override {
    auto r = Call("quiesce", json::object{}, timeout);
    return r.ok() ? Status::Ok() : r.status();
  }

  Result<ExecResult> Exec(const ExecRequest& req, std::chrono::milliseconds timeout) override {
    if (req.argv.empty()) return Status::InvalidArgument("exec: argv must not be empty");
    json::array argv;
    for (const auto& s : req.argv) argv.emplace_back(s);
    json::object a{{"argv", std::move(argv)}, {"timeout_ms", static_cast<int64_t>(req.timeout.count())}};
    if (!req.stdin_data.empty()) a["stdin_b64"] = util::Base64Encode(req.stdin_data);
    auto r = Call("exec", std::move(a), timeout);
    if (!r.ok()) return r.status();
    ExecResult out;
    out.exit_code = static_cast<int>(Int(*r, "exit_code"));
    auto so = B64Decode(Str(*r, "stdout_b64"));
    if (!so) return Untrusted("exec", "stdout_b64 of the reply is not base64");
    auto se = B64Decode(Str(*r, "stderr_b64"));
    if (!se) return Untrusted("exec", "stderr_b64 of the reply is not base64");
    out.stdout_data = std::move(*so);
    out.stderr_data = std::move(*se);
    out.truncated = Bool(*r, "truncated");
    return out;
  }

  Result<DockerResponse> Docker(const DockerRequest& req, std::chrono::milliseconds timeout) override {
    if (auto st = CheckDockerRequest(req); !st.ok()) return st;
    auto r = Call("docker", DockerArgs(req), timeout);
    if (!r.ok()) return r.status();
    const auto* status = r->if_contains("status");
    if (!status || !(status->is_int64() || status->is_uint64())) {
      return Untrusted("docker", "the reply has no integer status");
    }
    DockerResponse out;
    out.status = static_cast<int>(Int(*r, "status"));
    auto body = B64Decode(Str(*r, "body_b64"));
    if (!body) return Untrusted("docker", "body_b64 of the reply is not base64");
    out.body = std::move(*body);
    out.truncated = Bool(*r, "truncated");
    return out;
  }

  // docker_start, then docker_read (each waits up to kStreamReadWaitMs for new bytes) until the agent says
  // done. Other calls on this channel go in between the reads.
  Result<DockerResponse> DockerStream(const DockerRequest& req, const std::function<void(std::string_view)>& on_body,
                                      std::chrono::milliseconds timeout) override {
    if (auto st = CheckDockerRequest(req); !st.ok()) return st;
    const auto deadline = Clock::now() + timeout;
    auto started = Call("docker_start", DockerArgs(req), timeout);
    if (!started.ok()) {
      // An agent older than the streaming ops: one whole exchange instead.
      if (started.status().code() == StatusCode::kFailedPrecondition &&
          started.status().message().find("unknown_op") != std::string::npos) {
        return GuestChannel::DockerStream(req, on_body, std::chrono::milliseconds(std::max<int64_t>(1, MsLeft(deadline))));
      }
      return started.status();
    }
    const int64_t job = Int(*started, "job");
    if (job <= 0) return Untrusted("docker_start", "the reply has no positive job number");
    DockerResponse out;
    int64_t next_offset = 0;
    while (true) {
      int64_t left = MsLeft(deadline);
      if (left <= 0) {
        CancelJob(job);
        return Status::DeadlineExceeded(options_.label + "guest agent docker: no end of the response of " +
                                        req.method + " " + req.path.substr(0, 128) + " within " +
                                        std::to_string(timeout.count()) + " ms");
      }
      int64_t wait = std::min<int64_t>(kStreamReadWaitMs, left);
      json::object a{{"job", job}, {"wait_ms", wait}};
      auto r = Call("docker_read", std::move(a), std::chrono::milliseconds(std::min<int64_t>(left, wait + 10000)));
      if (!r.ok()) {
        CancelJob(job);
        return r.status();
      }
      out.status = static_cast<int>(Int(*r, "status"));
      auto body = B64Decode(Str(*r, "body_b64"));
      if (!body) return Untrusted("docker_read", "body_b64 of the reply is not base64");
      const int64_t offset = Int(*r, "offset");
      if (offset < 0 || offset > INT64_MAX - static_cast<int64_t>(body->size())) {
        return Untrusted("docker_read", "the reply has an invalid offset");
      }
      if (offset > next_offset) out.truncated = true;  // the agent dropped bytes we did not read
      next_offset = offset + static_cast<int64_t>(body->size());
      if (!body->empty()) on_body(*body);
      if (Bool(*r, "done")) {
        if (const auto* e = r->if_contains("error"); e && e->is_string()) {
          return AgentError(Bool(*r, "timed_out") ? "timeout" : "failed", std::string(e->as_string()), "docker");
        }
        return out;
      }
    }
  }

  Status Launch(const LaunchRequest& req, std::chrono::milliseconds timeout) override {
    if (req.argv.empty()) return Status::InvalidArgument("launch: argv must not be empty");
    auto strings = [](const std::vector<std::string>& v) {
      json::array arr;
      for (const auto& s : v) arr.emplace_back(s);
      return arr;
    };
    json::object a{{"channel", req.channel},
                   {"argv", strings(req.argv)},
                   {"env", strings(req.env)},
                   {"timeout_ms", static_cast<int64_t>(req.timeout.count())}};
    if (!req.cwd.empty()) a["cwd"] = req.cwd;
    if (!req.user.empty()) a["user"] = req.user;
    if (!req.hostname_file.empty()) a["hostname_file"] = req.hostname_file;
    auto r = Call("launch", std::move(a), timeout);
    return r.ok() ? Status::Ok() : r.status();
  }

  Result<bool> LaunchWaiting(const std::string& channel, std::chrono::milliseconds timeout) override {
    auto r = Call("launch", json::object{{"channel", channel}, {"probe", true}}, timeout);
    if (!r.ok()) return r.status();
    return Bool(*r, "waiting");
  }

 private:
  static constexpr int64_t kStreamReadWaitMs = 500;

  // The agent validates the same way; checking here gives the caller InvalidArgument naming the field
  // instead of a round trip.
  static Status CheckDockerRequest(const DockerRequest& req) {
    if (!ValidDockerMethod(req.method)) {
      return Status::InvalidArgument("docker: method must be one of GET, POST, PUT, DELETE, HEAD (got \"" +
                                     req.method.substr(0, 16) + "\")");
    }
    if (!ValidDockerPath(req.path)) {
      return Status::InvalidArgument("docker: path must start with \"/\" and be at most " +
                                     std::to_string(kMaxDockerPathBytes) +
                                     " bytes of printable ASCII without space or '#'");
    }
    if (req.socket.empty() || req.socket[0] != '/' || req.socket.size() > 107 ||
        req.socket.find('\0') != std::string::npos) {
      return Status::InvalidArgument("docker: socket must be an absolute path of at most 107 bytes");
    }
    if (req.timeout.count() < 1 || req.timeout.count() > kMaxGuestTimeoutMs) {
      return Status::InvalidArgument("docker: timeout must be 1.." + std::to_string(kMaxGuestTimeoutMs) +
                                     " ms (got " + std::to_string(req.timeout.count()) + ")");
    }
    return Status::Ok();
  }

  static json::object DockerArgs(const DockerRequest& req) {
    json::object a{{"method", req.method},
                   {"path", req.path},
                   {"socket", req.socket},
                   {"timeout_ms", static_cast<int64_t>(req.timeout.count())}};
    if (!req.body.empty()) a["body_b64"] = util::Base64Encode(req.body);
    return a;
  }

  // Best effort: the agent forgets the job (and stops reading the daemon's answer).
  void CancelJob(int64_t job) { (void)Call("docker_cancel", json::object{{"job", job}}, std::chrono::seconds(2)); }

  Status Fail(const Status& st, const std::string& op) {
    std::string msg = options_.label + "guest agent " + op + ": " + st.message();
    if (st.code() != StatusCode::kDeadlineExceeded || !stream_.connected()) {
      if (options_.diagnose) {
        std::string extra = options_.diagnose();
        if (!extra.empty()) msg += " (" + extra + ")";
      }
    }
    return Status(st.code(), msg);
  }

  // The channel's verdict on a guest that broke the protocol: every later call fails at once. The caller of
  // the failing call gets DataLoss; the core decides what happens to the VM.
  Status Untrusted(const std::string& op, const std::string& what) {
    std::string msg = options_.label + "guest agent " + op + ": protocol violation: " + what;
    {
      std::lock_guard<std::mutex> l(broken_mu_);
      if (broken_.empty()) broken_ = msg;
    }
    if (options_.stats) ++options_.stats->violations;
    return Status::DataLoss(msg);
  }

  std::string Broken() {
    std::lock_guard<std::mutex> l(broken_mu_);
    return broken_;
  }

  // A request whose reply did not come: skipped without counting when it comes late. Bounded: the oldest
  // ids are forgotten first (their replies then count as unsolicited).
  void Outstanding(int64_t id) {
    outstanding_.insert(id);
    while (outstanding_.size() > kMaxOutstanding) outstanding_.erase(outstanding_.begin());
  }

  // Parses one line with the decode cap. nullopt: over the cap.
  std::optional<json::value> Decode(const std::string& line, bool* parsed) {
    auto peak = std::make_shared<size_t>(0);
    auto sp = json::make_shared_resource<CappedResource>(options_.max_decode_bytes, peak);
    boost::system::error_code ec;
    std::optional<json::value> v;
    try {
      v = json::parse(line, ec, sp);
    } catch (const std::bad_alloc&) {
      return std::nullopt;
    }
    if (options_.stats) RaisePeak(options_.stats->peak_decode_bytes, *peak);
    *parsed = !ec;
    if (ec) v = json::value();
    return v;
  }

  Result<json::object> Call(const std::string& op, json::object args, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    std::unique_lock<std::timed_mutex> lock(mu_, std::defer_lock);
    if (!lock.try_lock_until(deadline)) {
      return Status::DeadlineExceeded(options_.label + "guest agent " + op + ": another call held the channel for " +
                                      std::to_string(timeout.count()) + " ms");
    }
    if (auto why = Broken(); !why.empty()) {
      stream_.Close();
      return Status::DataLoss(options_.label + "guest agent " + op +
                              ": not sent, the channel is not trusted since an earlier protocol violation (" + why +
                              ")");
    }
    if (!options_.persistent) stream_.Close();
    if (!stream_.connected()) {
      auto left = std::chrono::milliseconds(MsLeft(deadline));
      auto fd = connect_(left);
      if (!fd.ok()) return Fail(fd.status(), op);
      stream_ = LineStream(*fd);
    }
    const int64_t id = next_id_++;
    args["v"] = kGuestProtocolVersion;
    args["id"] = id;
    args["op"] = op;
    std::string line = json::serialize(args);
    if (line.size() > kMaxRequestLine) {
      return Status::InvalidArgument(options_.label + "guest agent " + op + ": request of " +
                                     std::to_string(line.size()) + " bytes exceeds the protocol's " +
                                     std::to_string(kMaxRequestLine) + "-byte line limit");
    }
    line.push_back('\n');
    if (auto st = stream_.WriteAll(line, deadline); !st.ok()) {
      stream_.Close();  // a partial request would corrupt the stream
      return Fail(st, op);
    }
    // From here on, a call that ends without its reply leaves the request outstanding.
    int unsolicited = 0;
    auto violation = [&](const std::string& what) {
      stream_.Close();
      return Untrusted(op, what);
    };
    while (true) {
      auto reply = stream_.ReadLine(deadline, options_.max_reply_bytes);
      if (options_.stats) RaisePeak(options_.stats->peak_line_bytes, stream_.peak_buffered());
      if (!reply.ok()) {
        if (reply.status().code() == StatusCode::kResourceExhausted) return violation(reply.status().message());
        Outstanding(id);
        // On a plain timeout the connection stays usable: a late reply is skipped by its id.
        if (reply.status().code() != StatusCode::kDeadlineExceeded) stream_.Close();
        return Fail(reply.status(), op);
      }
      bool parsed = false;
      auto v = Decode(*reply, &parsed);
      if (!v) {
        return violation("a reply line of " + std::to_string(reply->size()) + " bytes needs more than " +
                         std::to_string(options_.max_decode_bytes) + " bytes of memory to decode");
      }
      // Which request the line answers; a line that answers none is unsolicited.
      std::string unsolicited_why;
      const json::object* o = v->is_object() ? &v->as_object() : nullptr;
      const auto* rid = o ? o->if_contains("id") : nullptr;
      if (!parsed || !o) {
        unsolicited_why = "a line that is not a JSON object: " + Excerpt(*reply);
      } else if (!rid || !(rid->is_int64() || rid->is_uint64())) {
        unsolicited_why = "a reply without an integer id: " + Excerpt(*reply);
      } else if (Int(*o, "id") != id) {
        const int64_t other = Int(*o, "id");
        if (outstanding_.erase(other)) continue;  // the late reply of an earlier call
        unsolicited_why = "a reply to id " + std::to_string(other) +
                          (other > 0 && other < id ? ", which is not outstanding" : ", which was never sent");
      }
      if (!unsolicited_why.empty()) {
        // Noise on the port (e.g. a partial line from before a reconnect) is tolerated, a stream of it is not.
        if (++unsolicited > options_.max_unsolicited_lines) {
          return violation(std::to_string(unsolicited) + " lines that answer no outstanding request (the last: " +
                           unsolicited_why + ")");
        }
        continue;
      }
      const auto* ok = o->if_contains("ok");
      if (ok && ok->is_bool() && ok->as_bool()) {
        const auto* res = o->if_contains("result");
        if (res && res->is_object()) return res->as_object();
        return violation("the reply to " + op + " says ok but has no result object");
      }
      const auto* err = o->if_contains("error");
      if (ok && ok->is_bool() && err && err->is_object()) {
        return AgentError(Str(err->as_object(), "code"), Str(err->as_object(), "message"), op);
      }
      return violation("the reply to " + op + " has neither ok:true with a result nor ok:false with an error");
    }
  }

  static constexpr size_t kMaxOutstanding = 256;

  Connector connect_;
  StreamChannelOptions options_;
  std::timed_mutex mu_;  // one call at a time; waiting for it counts against the call's deadline
  LineStream stream_;
  int64_t next_id_ = 1;
  std::set<int64_t> outstanding_;  // requests sent whose replies did not come (guarded by mu_)
  std::mutex broken_mu_;
  std::string broken_;  // the first protocol violation; non-empty: every call fails at once
};

}  // namespace

Result<int> ConnectUnixStream(const std::string& path, std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path too long (" + std::to_string(path.size()) +
                                   " bytes): " + path);
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto deadline = Clock::now() + timeout;
  auto sleep = std::chrono::milliseconds(1);
  while (true) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::Unavailable(std::string("socket: ") + std::strerror(errno));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    int e = errno;
    ::close(fd);
    if (e != ENOENT && e != ECONNREFUSED && e != EAGAIN && e != EINTR) {
      return Status::Unavailable("connect " + path + ": " + std::strerror(e));
    }
    if (Clock::now() + sleep >= deadline) {
      return Status::Unavailable("connect " + path + ": " + std::strerror(e));
    }
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::milliseconds(20));
  }
}

std::unique_ptr<GuestChannel> MakeStreamGuestChannel(Connector connect, StreamChannelOptions options) {
  return std::make_unique<StreamGuestChannel>(std::move(connect), std::move(options));
}

}  // namespace fcwarm::guest
