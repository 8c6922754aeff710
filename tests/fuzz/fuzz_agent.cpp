// libFuzzer target over the guest agent's request decoder (guest/agent/agent_core.*): the fuzzer's bytes are
// a request stream, split into lines by the agent's LineAssembler and handled by HandleRequestLine exactly as
// guest/agent/main.cpp does, against FuzzOps, a SystemOps double that touches nothing: no process is run, no
// file is read or written (an in-memory map stands for the guest's files), no socket is opened. The double's
// answers (dockerd present, its /_ping and /info, the docker op's HTTP response, launch outcomes, failing
// system calls) are chosen by the input so every op's decoding, validation and result paths are reached.
//
// Checks per reply: one line of valid JSON (UTF-8), an object with v=1, `ok` a boolean, `result` an object or
// `error` {code, message} with a documented code and no "internal error"; the id of a request that parses
// with an integer id is echoed. The double checks what the agent asks of the machine: HTTP requests the
// docker op builds are well-formed (no header injection), launch specs have the launcher's format.
//
// Input layout:
//   byte 0  double flags: bit0 dockerd runs; bit1 its /_ping fails (the init's reload marker is there, as
//           whenever /_ping fails: the agent never waits for dockerd);
//           bit2 /info already shows the wanted registry settings; bit3 SIGHUP fails; bit4 system calls
//           (mac, address, route, entropy, clock, neighbours, file writes) fail; bit5 a launcher waits;
//           bit6 processes cannot start / the docker socket cannot be reached; bit7 processes and docker
//           exchanges time out
//   byte 1  bits 0-6: the LineAssembler is fed in pieces of 1 + value bytes; bit7: line limit 256 bytes
//           (else the protocol's 64 KiB)
//   rest    the request stream. Lines starting with '#' are not sent to the agent; they set the double's
//           answers (a JSON line never starts with '#'):
//             #http <response>   the raw HTTP response of the docker ops ("\n" written as the two characters
//                                backslash n; each becomes CRLF)
//             #info <body>       the body of GET /info before a SIGHUP
//             #argv <a> <b> ...  dockerd's command line (space separated)
//             #file <path> <content>  a file of the guest (read by identity's docker step)
//             #launch <message>  the launcher's error message (launch fails with it)
#include <arpa/inet.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent_core.hpp"

namespace {

namespace fa = fcwarm::agent;
namespace json = boost::json;

[[noreturn]] void Fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "fuzz_agent: %s: %.*s\n", what, static_cast<int>(std::min<size_t>(detail.size(), 600)),
               detail.data());
  std::abort();
}

constexpr const char* kRoot = "/fuzz-root";  // the agent's root: every path it derives starts here

struct Config {
  uint8_t flags = 0;
  std::string http = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
  std::string info = "{}";
  std::vector<std::string> dockerd_argv{"dockerd"};
  std::string launch_error;
  std::map<std::string, std::string> files;
};

// Checks a request the agent built for a Unix-socket HTTP exchange (BuildHttpRequest): "METHOD TARGET
// HTTP/1.0" CRLF, header lines without bare CR/LF, an empty line, then exactly Content-Length body bytes.
void CheckHttpRequest(const std::string& req) {
  auto head_end = req.find("\r\n\r\n");
  if (head_end == std::string::npos) Fail("http request without the end of its head", req);
  std::string_view head(req.data(), head_end);
  std::string_view body = std::string_view(req).substr(head_end + 4);
  auto eol = head.find("\r\n");
  std::string_view first = head.substr(0, eol);
  if (first.size() < 14 || first.substr(first.size() - 9) != " HTTP/1.0") Fail("http request line", req);
  std::string_view mt = first.substr(0, first.size() - 9);
  auto sp = mt.find(' ');
  if (sp == std::string_view::npos || !fa::ValidHttpMethod(mt.substr(0, sp)) ||
      !fa::ValidHttpTarget(mt.substr(sp + 1)))
    Fail("http request line", req);
  size_t content_length = 0;
  bool has_length = false;
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (!rest.empty()) {
    auto e = rest.find("\r\n");
    std::string_view h = rest.substr(0, e);
    for (char c : h)
      if (c == '\r' || c == '\n' || c == '\0') Fail("control byte in an http header", req);
    if (h.find(": ") == std::string_view::npos) Fail("http header without a colon", req);
    if (h.rfind("Content-Length: ", 0) == 0) {
      has_length = true;
      content_length = std::stoul(std::string(h.substr(16)));
    }
    rest = e == std::string_view::npos ? std::string_view() : rest.substr(e + 2);
  }
  if (body.size() != (has_length ? content_length : 0)) Fail("http body size differs from Content-Length", req);
}

// The machine as FuzzOps pretends it is. Thread-safe (docker_start jobs call UnixHttp from their threads).
class FuzzOps final : public fa::SystemOps {
 public:
  explicit FuzzOps(Config c) : cfg_(std::move(c)) {}

  std::string BootId() override { return "11111111-2222-3333-4444-555555555555"; }
  std::chrono::milliseconds Uptime() override { return std::chrono::milliseconds(4242); }
  std::string Hostname() override {
    std::lock_guard l(mu_);
    return hostname_;
  }
  bool PathExists(const std::string& path) override {
    std::lock_guard l(mu_);
    // The init's reload marker is there whenever the double's dockerd does not answer its /_ping (bit1, or
    // bit6/bit7 failing every socket): otherwise identity would wait its whole timeout_ms (up to 60 s) for it.
    if (path == std::string(kRoot) + std::string(fa::kDockerReloadPendingMarker))
      return Flag(2) || Flag(64) || Flag(128);
    return path == std::string(kRoot) + "/etc" || path == "/run/ready" || cfg_.files.count(path) > 0;
  }
  fa::OpStatus SetHostname(const std::string& name) override {
    std::lock_guard l(mu_);
    hostname_ = name;
    return {};
  }
  fa::OpStatus WriteFile(const std::string& path, const std::string& content) override {
    return Put(path, content);
  }
  fa::OpStatus SetMac(const std::string&, const std::vector<uint8_t>& mac) override {
    if (mac.size() != 6) Fail("SetMac with a MAC that is not 6 bytes");
    return Sys("no such device");
  }
  fa::OpStatus SetIpv4(const std::string&, uint32_t, int prefix) override {
    if (prefix < 0 || prefix > 32) Fail("SetIpv4 with a prefix outside 0..32");
    return Sys("no such device");
  }
  fa::OpStatus SetDefaultRoute(const std::string&, uint32_t) override { return Sys("network unreachable"); }
  fa::OpStatus AddEntropy(const std::string&) override { return Sys("operation not permitted"); }
  fa::OpStatus SetWallClock(int64_t ns) override {
    if (ns < 0) Fail("SetWallClock with a negative time");
    return Sys("operation not permitted");
  }
  void Sync() override {}
  fa::OpStatus FlushNeighbours() override { return Sys("operation not permitted"); }
  std::vector<std::string> ListFiles(const std::string& dir) override {
    std::lock_guard l(mu_);
    std::vector<std::string> out;
    for (const auto& [p, c] : cfg_.files)
      if (p.size() > dir.size() && p.compare(0, dir.size(), dir) == 0 && p[dir.size()] == '/' &&
          p.find('/', dir.size() + 1) == std::string::npos)
        out.push_back(p);
    return out;
  }
  fa::OpStatus RemoveFile(const std::string& path) override {
    if (path.rfind(kRoot, 0) != 0) Fail("RemoveFile outside the agent's root", path);
    std::lock_guard l(mu_);
    cfg_.files.erase(path);
    return Flag(16) ? fa::OpStatus::Fail("read-only file system") : fa::OpStatus{};
  }
  fa::FileContent ReadFile(const std::string& path, std::size_t max_bytes) override {
    std::lock_guard l(mu_);
    fa::FileContent f;
    auto it = cfg_.files.find(path);
    if (it == cfg_.files.end()) return f;
    f.exists = true;
    f.content = it->second.substr(0, max_bytes);
    f.truncated = it->second.size() > max_bytes;
    return f;
  }
  fa::OpStatus ReplaceFile(const std::string& path, const std::string& content, unsigned mode) override {
    if (path.empty() || path[0] != '/') Fail("ReplaceFile with a relative path", path);
    if (mode != 0644) Fail("ReplaceFile with an unexpected mode");
    {
      std::lock_guard l(mu_);
      last_replaced_ = content;
    }
    return Put(path, content);
  }
  std::vector<fa::ProcessEntry> FindProcesses(const std::string& comm) override {
    if (comm != "dockerd" || !Flag(1)) return {};
    return {fa::ProcessEntry{4242, cfg_.dockerd_argv}};
  }
  fa::OpStatus SendSignal(int pid, int) override {
    if (pid != 4242) Fail("signal to a process the double did not report");
    std::lock_guard l(mu_);
    if (Flag(8)) return fa::OpStatus::Fail("no such process");
    signalled_ = true;
    return {};
  }
  fa::ProcessResult Run(const fa::ProcessSpec& spec) override {
    if (spec.argv.empty()) Fail("Run with an empty argv");
    if (spec.timeout.count() <= 0) Fail("Run with a non-positive timeout");
    fa::ProcessResult r;
    if (Flag(64)) {
      r.error = "No such file or directory";
      return r;
    }
    r.started = true;
    r.timed_out = Flag(128);
    r.exit_code = static_cast<int>(spec.argv.size() % 3);
    for (const auto& a : spec.argv) r.out += a + " ";
    r.err = spec.stdin_data;
    r.truncated = r.out.size() > spec.max_output || r.err.size() > spec.max_output;
    r.out.resize(std::min(r.out.size(), spec.max_output));
    r.err.resize(std::min(r.err.size(), spec.max_output));
    return r;
  }
  fa::HttpExchange UnixHttp(const std::string& socket_path, const std::string& request,
                            std::chrono::milliseconds timeout, std::size_t max_body) override {
    if (socket_path.empty() || socket_path[0] != '/') Fail("UnixHttp with a relative socket path", socket_path);
    if (timeout.count() <= 0) Fail("UnixHttp with a non-positive timeout");
    CheckHttpRequest(request);
    fa::HttpExchange x;
    if (Flag(64)) {
      x.error = socket_path + ": connect: Connection refused";
      return x;
    }
    if (Flag(128)) {
      x.error = socket_path + ": no complete response within " + std::to_string(timeout.count()) + " ms";
      x.timed_out = true;
      return x;
    }
    std::string raw;
    if (request.rfind("GET /_ping ", 0) == 0) {
      if (Flag(1) && Flag(2)) {
        x.error = socket_path + ": connect: No such file or directory";
        return x;
      }
      raw = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK";
    } else if (request.rfind("GET /info ", 0) == 0) {
      std::lock_guard l(mu_);
      raw = "HTTP/1.0 200 OK\r\n\r\n" + (signalled_ || Flag(4) ? Cooperative() : cfg_.info);
    } else {
      std::lock_guard l(mu_);
      raw = cfg_.http;
    }
    auto end = raw.find("\r\n\r\n");
    if (end == std::string::npos) {
      x.error = socket_path + ": connection closed inside the response head";
      return x;
    }
    std::string err = fa::ParseHttpHead(std::string_view(raw).substr(0, end), x.response);
    if (!err.empty()) {
      x.error = socket_path + ": " + err;
      x.response = fa::HttpResponse{};
      return x;
    }
    std::string body = raw.substr(end + 4);
    x.response.truncated = body.size() > max_body;
    body.resize(std::min(body.size(), max_body));
    x.response.body = std::move(body);
    return x;
  }
  fa::LaunchOutcome DeliverLaunch(const std::string& channel_dir, const std::string& spec,
                                  std::chrono::milliseconds timeout, bool probe) override {
    if (channel_dir.rfind(std::string(kRoot) + std::string(fa::kParkedDir), 0) != 0)
      Fail("launch channel outside the parked directory", channel_dir);
    if (timeout.count() <= 0) Fail("DeliverLaunch with a non-positive timeout");
    if (!probe) {
      static constexpr std::string_view kMagic("fcwarm-launch/1\0", 16);
      if (spec.size() > fa::kMaxLaunchSpecBytes || spec.compare(0, kMagic.size(), kMagic) != 0 ||
          spec.back() != '\0')
        Fail("launch spec not in the launcher's format", spec);
    }
    fa::LaunchOutcome o;
    if (Flag(64)) {
      o.error = channel_dir + "/spec: No such file or directory";
      return o;
    }
    o.waiting = Flag(32);
    if (probe || !o.waiting) return o;
    o.timed_out = Flag(128);
    o.exec_ok = cfg_.launch_error.empty();
    o.exec_error = cfg_.launch_error;
    return o;
  }

 private:
  bool Flag(uint8_t bit) const { return (cfg_.flags & bit) != 0; }
  fa::OpStatus Sys(const char* why) const { return Flag(16) ? fa::OpStatus::Fail(why) : fa::OpStatus{}; }
  fa::OpStatus Put(const std::string& path, const std::string& content) {
    if (Flag(16)) return fa::OpStatus::Fail("read-only file system");
    std::lock_guard l(mu_);
    cfg_.files[path] = content;
    return {};
  }
  // GET /info of a dockerd that applied the daemon.json written last (as dockerd reports it).
  std::string Cooperative() const {
    std::error_code ec;
    json::value cfg = json::parse(last_replaced_, ec);
    json::object reg;
    json::array cidrs{"127.0.0.0/8"};
    json::object index;
    if (!ec && cfg.is_object()) {
      const auto& o = cfg.get_object();
      if (auto it = o.find("registry-mirrors"); it != o.end()) reg["Mirrors"] = it->value();
      if (auto it = o.find("insecure-registries"); it != o.end() && it->value().is_array()) {
        for (const auto& r : it->value().get_array()) {
          if (!r.is_string()) continue;
          std::string s(r.get_string());
          if (s.find('/') != std::string::npos)
            cidrs.emplace_back(s);
          else
            index[s] = json::object{{"Secure", false}};
        }
      }
    }
    reg["InsecureRegistryCIDRs"] = std::move(cidrs);
    reg["IndexConfigs"] = std::move(index);
    return json::serialize(json::object{{"RegistryConfig", std::move(reg)}});
  }

  std::mutex mu_;
  Config cfg_;
  std::string hostname_ = "fuzz-host";
  std::string last_replaced_;
  bool signalled_ = false;
};

const std::set<std::string> kCodes = {"bad_request", "too_large", "unsupported_version", "unknown_op", "failed",
                                      "timeout", "not_found", "busy", "not_waiting", "launch_failed"};

// The reply to `line` (nullptr when it was too large): one valid JSON object as the protocol says.
void CheckReply(const std::string* line, const std::string& reply) {
  if (reply.find('\n') != std::string::npos) Fail("reply contains a newline", reply);
  std::error_code ec;
  json::value v = json::parse(reply, ec);
  if (ec || !v.is_object()) Fail("reply is not a JSON object", reply);
  const auto& o = v.get_object();
  const auto* ver = o.if_contains("v");
  const auto* ok = o.if_contains("ok");
  const auto* id = o.if_contains("id");
  if (!ver || !ver->is_int64() || ver->get_int64() != 1) Fail("reply without v=1", reply);
  if (!ok || !ok->is_bool()) Fail("reply without a boolean ok", reply);
  if (!id) Fail("reply without id", reply);
  if (ok->get_bool()) {
    const auto* res = o.if_contains("result");
    if (!res || !res->is_object()) Fail("ok reply without a result object", reply);
  } else {
    const auto* err = o.if_contains("error");
    if (!err || !err->is_object()) Fail("error reply without an error object", reply);
    const auto* code = err->get_object().if_contains("code");
    const auto* msg = err->get_object().if_contains("message");
    if (!code || !code->is_string() || !kCodes.count(std::string(code->get_string())))
      Fail("error reply with an undocumented code", reply);
    if (!msg || !msg->is_string() || msg->get_string().empty()) Fail("error reply without a message", reply);
    // HandleRequestLine's catch-all is the only "failed" without an id (every other null-id error is about an
    // unparsable request: bad_request, too_large); messages themselves may quote anything.
    if (id->is_null() && code->get_string() == "failed") Fail("an exception escaped an op", reply);
  }
  if (!line) return;
  // The agent parses with max_depth 16; a request that parses so with an integer id gets it back.
  json::parse_options opts;
  opts.max_depth = 16;
  std::error_code rec;
  json::value req = json::parse(json::string_view(line->data(), line->size()), rec, {}, opts);
  if (rec || !req.is_object()) return;
  const auto* rid = req.get_object().if_contains("id");
  if (rid && (rid->is_int64() || rid->is_uint64()) && *rid != *id) Fail("reply id differs from the request's", reply);
}

std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
      out += "\r\n";
      ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Applies a '#' line to the double's configuration (before the requests run: lines are collected first).
void Configure(std::string_view line, Config& cfg) {
  auto word = [&](std::string_view prefix) { return line.rfind(prefix, 0) == 0; };
  if (word("#http ")) {
    cfg.http = Unescape(line.substr(6));
  } else if (word("#info ")) {
    cfg.info = std::string(line.substr(6));
  } else if (word("#argv ")) {
    cfg.dockerd_argv.clear();
    std::string_view rest = line.substr(6);
    while (!rest.empty()) {
      auto sp = rest.find(' ');
      cfg.dockerd_argv.emplace_back(rest.substr(0, sp));
      if (sp == std::string_view::npos) break;
      rest.remove_prefix(sp + 1);
    }
  } else if (word("#file ")) {
    std::string_view rest = line.substr(6);
    auto sp = rest.find(' ');
    std::string path(rest.substr(0, sp));
    cfg.files[path] = sp == std::string_view::npos ? std::string() : std::string(rest.substr(sp + 1));
  } else if (word("#launch ")) {
    cfg.launch_error = std::string(line.substr(8));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Config cfg;
  cfg.flags = data[0];
  const size_t step = 1 + (data[1] & 0x7f);
  const size_t max_line = (data[1] & 0x80) ? 256 : fa::kMaxLineBytes;
  std::string_view stream(reinterpret_cast<const char*>(data + 2), size - 2);

  // Split as the agent's transport does: LineAssembler events, in pieces of `step` bytes.
  fa::LineAssembler la(max_line);
  std::vector<fa::LineAssembler::Event> events;
  for (size_t off = 0; off < stream.size(); off += step) {
    auto ev = la.Feed(stream.substr(off, step));
    for (auto& e : ev) {
      if (!e.too_large && e.line.size() > max_line) Fail("LineAssembler returned a line over its limit");
      if (!e.too_large && e.line.find('\n') != std::string::npos) Fail("LineAssembler returned a newline");
      if (!e.too_large && !e.line.empty() && e.line[0] == '#')
        Configure(e.line, cfg);
      else
        events.push_back(std::move(e));
    }
  }

  FuzzOps ops(std::move(cfg));
  fa::AgentContext ctx{&ops, kRoot};
  for (const auto& ev : events) {
    if (ev.too_large) {
      CheckReply(nullptr, fa::TooLargeReply());
      continue;
    }
    if (ev.line.find_first_not_of(" \t") == std::string::npos) continue;  // blank: not a request (main.cpp)
    CheckReply(&ev.line, fa::HandleRequestLine(ev.line, ctx));
  }
  return 0;  // ctx's DockerJobs joins every job thread here
}
