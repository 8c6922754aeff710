// Request parsing, validation and dispatch for protocol v1 (docs/guest-protocol.md).
#include "agent_core.hpp"

#include <arpa/inet.h>

#include <array>
#include <boost/json.hpp>
#include <cstdio>
#include <exception>
#include <string>

namespace fcwarm::agent {
namespace json = boost::json;

namespace {

// An error that becomes the reply's "error" object.
struct Failure {
  std::string code;
  std::string message;
};

// Replaces bytes that are not printable ASCII so a reply is always valid UTF-8 JSON.
std::string Printable(std::string_view s, std::size_t max = 512) {
  std::string out;
  for (char c : s.substr(0, max)) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  if (s.size() > max) out += "...";
  return out;
}

std::string Serialize(const json::object& o) { return json::serialize(o); }

std::string ErrorReply(const json::value& id, std::string_view code, std::string_view message) {
  json::object o;
  o["v"] = kProtocolVersion;
  o["id"] = id;
  o["ok"] = false;
  o["error"] = json::object{{"code", code}, {"message", message}};
  return Serialize(o);
}

std::string OkReply(const json::value& id, json::object result) {
  json::object o;
  o["v"] = kProtocolVersion;
  o["id"] = id;
  o["ok"] = true;
  o["result"] = std::move(result);
  return Serialize(o);
}

// ---- typed field access (messages name the field) ----

const json::value* Find(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it == o.end() ? nullptr : &it->value();
}

std::optional<std::string> OptString(const json::object& o, std::string_view key,
                                     std::string_view where = "") {
  const json::value* v = Find(o, key);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_string())
    throw Failure{"bad_request", std::string(where) + std::string(key) + " must be a string"};
  return std::string(v->get_string());
}

std::string ReqString(const json::object& o, std::string_view key, std::string_view where = "") {
  auto s = OptString(o, key, where);
  if (!s) throw Failure{"bad_request", std::string(where) + std::string(key) + " is required"};
  return *s;
}

std::optional<int64_t> OptInt(const json::object& o, std::string_view key, std::string_view where = "") {
  const json::value* v = Find(o, key);
  if (!v || v->is_null()) return std::nullopt;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) {
    if (v->get_uint64() > static_cast<uint64_t>(INT64_MAX))
      throw Failure{"bad_request", std::string(where) + std::string(key) + " is out of range"};
    return static_cast<int64_t>(v->get_uint64());
  }
  throw Failure{"bad_request", std::string(where) + std::string(key) + " must be an integer"};
}

std::vector<std::string> ReqArgv(const json::object& o, std::string_view key, std::string_view where = "") {
  const json::value* v = Find(o, key);
  std::string name = std::string(where) + std::string(key);
  if (!v || v->is_null()) throw Failure{"bad_request", name + " is required"};
  if (!v->is_array()) throw Failure{"bad_request", name + " must be an array of strings"};
  const auto& arr = v->get_array();
  if (arr.empty()) throw Failure{"bad_request", name + " must not be empty"};
  std::vector<std::string> out;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    if (!arr[i].is_string())
      throw Failure{"bad_request", name + "[" + std::to_string(i) + "] must be a string"};
    std::string s(arr[i].get_string());
    if (s.find('\0') != std::string::npos)
      throw Failure{"bad_request", name + "[" + std::to_string(i) + "] contains a NUL byte"};
    out.push_back(std::move(s));
  }
  return out;
}

// ---- parsing helpers ----

std::optional<std::vector<uint8_t>> ParseMac(std::string_view s) {
  if (s.size() != 17) return std::nullopt;
  std::vector<uint8_t> mac;
  for (int i = 0; i < 6; ++i) {
    if (i > 0 && s[i * 3 - 1] != ':') return std::nullopt;
    unsigned v = 0;
    for (int j = 0; j < 2; ++j) {
      char c = s[i * 3 + j];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        v |= c - 'A' + 10;
      else
        return std::nullopt;
    }
    mac.push_back(static_cast<uint8_t>(v));
  }
  return mac;
}

std::optional<uint32_t> ParseIpv4(const std::string& s) {
  in_addr a{};
  if (inet_pton(AF_INET, s.c_str(), &a) != 1) return std::nullopt;
  return a.s_addr;
}

bool ValidHostname(std::string_view h) {
  if (h.empty() || h.size() > 64) return false;
  for (char c : h) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

bool ValidIfaceName(std::string_view s) {
  if (s.empty() || s.size() >= 16) return false;  // IFNAMSIZ
  for (char c : s) {
    if (c == '/' || c == ':' || static_cast<unsigned char>(c) <= 0x20 ||
        static_cast<unsigned char>(c) >= 0x7f)
      return false;
  }
  return true;
}

// ---- operations ----

json::object OpPing(const json::object&, AgentContext& ctx) {
  json::object r;
  r["agent_version"] = kAgentVersion;
  r["protocol"] = kProtocolVersion;
  r["boot_id"] = Printable(ctx.sys->BootId());
  r["uptime_ms"] = static_cast<int64_t>(ctx.sys->Uptime().count());
  r["hostname"] = Printable(ctx.sys->Hostname());
  return r;
}

json::object OpIdentity(const json::object& req, AgentContext& ctx) {
  // Validate everything before changing anything.
  auto hostname = OptString(req, "hostname");
  if (hostname && !ValidHostname(*hostname))
    throw Failure{"bad_request", "hostname must be 1-64 characters of [A-Za-z0-9.-]"};
  std::string iface = OptString(req, "iface").value_or("eth0");
  if (!ValidIfaceName(iface)) throw Failure{"bad_request", "iface is not a valid interface name"};
  auto mac_text = OptString(req, "mac");
  std::optional<std::vector<uint8_t>> mac;
  if (mac_text) {
    mac = ParseMac(*mac_text);
    if (!mac) throw Failure{"bad_request", "mac must look like 02:00:00:00:00:01"};
    if ((*mac)[0] & 1) throw Failure{"bad_request", "mac must be a unicast address"};
  }
  auto cidr = OptString(req, "ip_cidr");
  uint32_t addr = 0;
  int prefix = 0;
  if (cidr) {
    auto slash = cidr->find('/');
    std::optional<uint32_t> a;
    if (slash != std::string::npos) a = ParseIpv4(cidr->substr(0, slash));
    std::string p = slash == std::string::npos ? "" : cidr->substr(slash + 1);
    bool prefix_ok = !p.empty() && p.size() <= 2 && p.find_first_not_of("0123456789") == std::string::npos;
    if (prefix_ok) prefix = std::stoi(p);
    if (!a || !prefix_ok || prefix > 32) throw Failure{"bad_request", "ip_cidr must look like 10.0.0.2/24"};
    addr = *a;
  }
  auto gateway_text = OptString(req, "gateway");
  uint32_t gateway = 0;
  if (gateway_text) {
    auto g = ParseIpv4(*gateway_text);
    if (!g) throw Failure{"bad_request", "gateway must be an IPv4 address"};
    gateway = *g;
  }
  auto entropy_b64 = OptString(req, "entropy_b64");
  std::string entropy;
  if (entropy_b64) {
    auto d = Base64Decode(*entropy_b64);
    if (!d) throw Failure{"bad_request", "entropy_b64 is not valid base64"};
    entropy = std::move(*d);
  }
  auto clock_ns = OptInt(req, "wall_clock_ns");
  if (clock_ns && *clock_ns < 0) throw Failure{"bad_request", "wall_clock_ns must not be negative"};

  auto check = [](const char* step, const OpStatus& s) {
    if (!s.ok()) throw Failure{"failed", std::string(step) + ": " + s.error};
  };
  json::object r;
  if (hostname) {
    check("hostname", ctx.sys->SetHostname(*hostname));
    std::string etc = ctx.root + "/etc/hostname";
    if (ctx.sys->PathExists(ctx.root + "/etc")) {
      // "when writable": a read-only /etc is not an error.
      (void)ctx.sys->WriteFile(etc, *hostname + "\n");
    }
  }
  if (mac) check("mac", ctx.sys->SetMac(iface, *mac));
  if (cidr) check("ip_cidr", ctx.sys->SetIpv4(iface, addr, prefix));
  if (gateway_text) check("gateway", ctx.sys->SetDefaultRoute(iface, gateway));
  if (entropy_b64) check("entropy_b64", ctx.sys->AddEntropy(entropy));
  if (clock_ns) check("wall_clock_ns", ctx.sys->SetWallClock(*clock_ns));

  r["hostname"] = Printable(ctx.sys->Hostname());
  r["iface"] = iface;
  r["mac"] = mac_text ? json::value(*mac_text) : json::value(nullptr);
  r["ip_cidr"] = cidr ? json::value(*cidr) : json::value(nullptr);
  r["entropy_bytes"] = static_cast<int64_t>(entropy.size());
  r["clock_set"] = clock_ns.has_value();
  return r;
}

std::chrono::milliseconds ParseTimeout(const json::object& o, std::string_view where, int64_t def) {
  auto t = OptInt(o, "timeout_ms", where);
  int64_t ms = t.value_or(def);
  if (ms <= 0 || ms > kMaxExecTimeoutMs)
    throw Failure{"bad_request",
                  std::string(where) + "timeout_ms must be in 1.." + std::to_string(kMaxExecTimeoutMs)};
  return std::chrono::milliseconds(ms);
}

json::object OpRuntimeReady(const json::object& req, AgentContext& ctx) {
  const json::value* cv = Find(req, "check");
  if (!cv || cv->is_null()) throw Failure{"bad_request", "check is required"};
  if (!cv->is_object()) throw Failure{"bad_request", "check must be an object"};
  const auto& check = cv->get_object();
  std::string kind = ReqString(check, "kind", "check.");
  bool ready = false;
  std::string detail;
  if (kind == "none") {
    ready = true;
    detail = "no check";
  } else if (kind == "file") {
    std::string path = ReqString(check, "path", "check.");
    if (path.empty() || path[0] != '/') throw Failure{"bad_request", "check.path must be an absolute path"};
    ready = ctx.sys->PathExists(path);
    detail = ready ? path + " exists" : path + " does not exist";
  } else if (kind == "docker") {
    std::string sock = OptString(check, "socket", "check.").value_or(std::string(kDefaultDockerSocket));
    if (sock.empty() || sock[0] != '/') throw Failure{"bad_request", "check.socket must be an absolute path"};
    auto timeout = ParseTimeout(check, "check.", 5000);
    // Ready when GET /_ping answers 200 with body "OK".
    HttpExchange x = ctx.sys->UnixHttp(sock, BuildHttpRequest("GET", "/_ping", std::nullopt), timeout, 4096);
    if (!x.ok()) {
      detail = x.error;
    } else {
      const HttpResponse& r = x.response;
      ready = r.status == 200 && r.body == "OK";
      detail = ready
                   ? sock + ": " + r.status_line + ", body OK"
                   : sock + " answered \"" + r.status_line + "\" with body \"" + r.body.substr(0, 64) + "\"";
    }
  } else if (kind == "command") {
    ProcessSpec spec;
    spec.argv = ReqArgv(check, "argv", "check.");
    spec.timeout = ParseTimeout(check, "check.", 5000);
    spec.max_output = 4096;
    ProcessResult pr = ctx.sys->Run(spec);
    if (!pr.started) {
      detail = "could not start " + spec.argv[0] + ": " + pr.error;
    } else if (pr.timed_out) {
      detail = spec.argv[0] + " did not exit within " + std::to_string(spec.timeout.count()) + " ms";
    } else {
      ready = pr.exit_code == 0;
      detail = spec.argv[0] + " exited with " + std::to_string(pr.exit_code);
      if (!ready && !pr.err.empty()) detail += ": " + pr.err.substr(0, 200);
    }
  } else {
    throw Failure{"bad_request", "check.kind must be one of none, file, docker, command"};
  }
  return json::object{{"ready", ready}, {"detail", Printable(detail)}};
}

json::object OpQuiesce(const json::object&, AgentContext& ctx) {
  ctx.sys->Sync();
  std::string problems;
  for (const auto& f : ctx.sys->ListFiles(ctx.root + "/var/lib/dhcp")) {
    auto s = ctx.sys->RemoveFile(f);
    if (!s.ok()) problems += f + ": " + s.error + "; ";
  }
  for (const char* seed : {"/var/lib/systemd/random-seed", "/var/lib/urandom/random-seed"}) {
    auto s = ctx.sys->RemoveFile(ctx.root + seed);
    if (!s.ok()) problems += std::string(seed) + ": " + s.error + "; ";
  }
  auto n = ctx.sys->FlushNeighbours();
  if (!n.ok()) problems += "neighbours: " + n.error + "; ";
  if (!problems.empty()) throw Failure{"failed", Printable(problems)};
  ctx.sys->Sync();
  return json::object{{"synced", true}};
}

json::object OpExec(const json::object& req, AgentContext& ctx) {
  ProcessSpec spec;
  spec.argv = ReqArgv(req, "argv");
  spec.timeout = ParseTimeout(req, "", kDefaultExecTimeoutMs);
  if (auto in = OptString(req, "stdin_b64")) {
    auto d = Base64Decode(*in);
    if (!d) throw Failure{"bad_request", "stdin_b64 is not valid base64"};
    spec.stdin_data = std::move(*d);
  }
  spec.max_output = kMaxStreamBytes;
  ProcessResult pr = ctx.sys->Run(spec);
  if (!pr.started) throw Failure{"failed", Printable("cannot run " + spec.argv[0] + ": " + pr.error)};
  if (pr.timed_out)
    throw Failure{"timeout", Printable(spec.argv[0] + " did not exit within " +
                                       std::to_string(spec.timeout.count()) + " ms and was killed")};
  json::object r;
  r["exit_code"] = pr.exit_code;
  r["stdout_b64"] = Base64Encode(pr.out);
  r["stderr_b64"] = Base64Encode(pr.err);
  r["truncated"] = pr.truncated;
  return r;
}

json::object OpDocker(const json::object& req, AgentContext& ctx) {
  // Validate everything first; every message names its field.
  std::string method = ReqString(req, "method");
  if (!ValidHttpMethod(method))
    throw Failure{"bad_request", "method must be one of GET, POST, PUT, DELETE, HEAD (got \"" +
                                     Printable(method, 16) + "\")"};
  std::string path = ReqString(req, "path");
  if (!ValidHttpTarget(path))
    throw Failure{"bad_request", "path must start with \"/\" and be at most " +
                                     std::to_string(kMaxHttpTargetBytes) +
                                     " bytes of printable ASCII without space or '#'"};
  std::optional<std::string> body;
  if (auto b = OptString(req, "body_b64")) {
    body = Base64Decode(*b);
    if (!body) throw Failure{"bad_request", "body_b64 is not valid base64"};
  }
  std::string sock = OptString(req, "socket").value_or(std::string(kDefaultDockerSocket));
  // 107: sockaddr_un.sun_path holds 108 bytes including the NUL.
  if (sock.empty() || sock[0] != '/' || sock.size() > 107 || sock.find('\0') != std::string::npos)
    throw Failure{"bad_request", "socket must be an absolute path of at most 107 bytes"};
  auto timeout = ParseTimeout(req, "", kDefaultDockerTimeoutMs);

  HttpExchange x = ctx.sys->UnixHttp(sock, BuildHttpRequest(method, path, body), timeout, kMaxStreamBytes);
  if (!x.ok()) {
    std::string what = "docker " + method + " " + Printable(path, 128) + " via " + x.error;
    throw Failure{x.timed_out ? "timeout" : "failed", Printable(what)};
  }
  json::object r;
  r["status"] = x.response.status;
  r["body_b64"] = Base64Encode(x.response.body);
  r["truncated"] = x.response.truncated;
  return r;
}

std::string Handle(std::string_view line, AgentContext& ctx) {
  if (line.size() > kMaxLineBytes) return TooLargeReply();
  json::value id = nullptr;
  std::error_code ec;
  json::parse_options opts;
  opts.max_depth = 16;
  json::value doc = json::parse(json::string_view(line.data(), line.size()), ec, {}, opts);
  if (ec) return ErrorReply(nullptr, "bad_request", "malformed JSON: " + ec.message());
  if (!doc.is_object()) return ErrorReply(nullptr, "bad_request", "request must be a JSON object");
  const auto& req = doc.get_object();
  const json::value* idv = Find(req, "id");
  if (!idv) return ErrorReply(nullptr, "bad_request", "id is required");
  if (!idv->is_int64() && !idv->is_uint64())
    return ErrorReply(nullptr, "bad_request", "id must be an integer");
  id = *idv;
  try {
    const json::value* vv = Find(req, "v");
    if (!vv) throw Failure{"bad_request", "v is required"};
    if (!vv->is_int64() && !vv->is_uint64()) throw Failure{"bad_request", "v must be an integer"};
    if (!(vv->is_int64() ? vv->get_int64() == kProtocolVersion : vv->get_uint64() == kProtocolVersion))
      throw Failure{"unsupported_version", "this agent speaks protocol version 1"};
    std::string op = ReqString(req, "op");
    json::object result;
    if (op == "ping")
      result = OpPing(req, ctx);
    else if (op == "identity")
      result = OpIdentity(req, ctx);
    else if (op == "runtime_ready")
      result = OpRuntimeReady(req, ctx);
    else if (op == "quiesce")
      result = OpQuiesce(req, ctx);
    else if (op == "exec")
      result = OpExec(req, ctx);
    else if (op == "docker")
      result = OpDocker(req, ctx);
    else
      throw Failure{"unknown_op", "unknown op: " + Printable(op, 64)};
    return OkReply(id, std::move(result));
  } catch (const Failure& f) {
    return ErrorReply(id, f.code, f.message);
  }
}

}  // namespace

std::string TooLargeReply() {
  return ErrorReply(nullptr, "too_large", "request line exceeds " + std::to_string(kMaxLineBytes) + " bytes");
}

std::string HandleRequestLine(std::string_view line, AgentContext& ctx) {
  try {
    return Handle(line, ctx);
  } catch (const std::exception& e) {
    return ErrorReply(nullptr, "failed", Printable(std::string("internal error: ") + e.what()));
  } catch (...) {
    return ErrorReply(nullptr, "failed", "internal error");
  }
}

std::vector<LineAssembler::Event> LineAssembler::Feed(std::string_view bytes) {
  std::vector<Event> events;
  while (!bytes.empty()) {
    auto nl = bytes.find('\n');
    std::string_view chunk = nl == std::string_view::npos ? bytes : bytes.substr(0, nl);
    if (!discarding_) {
      if (buf_.size() + chunk.size() > max_line_) {
        discarding_ = true;
        buf_.clear();
        buf_.shrink_to_fit();
      } else {
        buf_.append(chunk);
      }
    }
    if (nl == std::string_view::npos) break;
    bytes.remove_prefix(nl + 1);
    if (discarding_) {
      events.push_back(Event{true, {}});
      discarding_ = false;
    } else {
      if (!buf_.empty() && buf_.back() == '\r') buf_.pop_back();
      events.push_back(Event{false, std::move(buf_)});
      buf_.clear();
    }
  }
  return events;
}

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string Base64Encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    uint32_t n =
        (uint32_t(uint8_t(data[i])) << 16) | (uint32_t(uint8_t(data[i + 1])) << 8) | uint8_t(data[i + 2]);
    out.push_back(kB64[(n >> 18) & 63]);
    out.push_back(kB64[(n >> 12) & 63]);
    out.push_back(kB64[(n >> 6) & 63]);
    out.push_back(kB64[n & 63]);
  }
  std::size_t rest = data.size() - i;
  if (rest > 0) {
    uint32_t n = uint32_t(uint8_t(data[i])) << 16;
    if (rest == 2) n |= uint32_t(uint8_t(data[i + 1])) << 8;
    out.push_back(kB64[(n >> 18) & 63]);
    out.push_back(kB64[(n >> 12) & 63]);
    out.push_back(rest == 2 ? kB64[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::array<int, 256> rev;
  rev.fill(-1);
  for (int i = 0; i < 64; ++i) rev[static_cast<unsigned char>(kB64[i])] = i;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      char c = text[i + j];
      if (c == '=') {
        // Padding only in the last quad, only in the last two positions, and nothing after it.
        if (i + 4 != text.size() || j < 2) return std::nullopt;
        ++pad;
        v[j] = 0;
      } else {
        if (pad > 0) return std::nullopt;
        v[j] = rev[static_cast<unsigned char>(c)];
        if (v[j] < 0) return std::nullopt;
      }
    }
    uint32_t n = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(static_cast<char>((n >> 16) & 0xff));
    if (pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
  }
  return out;
}

}  // namespace fcwarm::agent
