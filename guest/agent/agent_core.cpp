// Request parsing, validation and dispatch for protocol v1 (docs/guest-protocol.md).
#include "agent_core.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <csignal>
#include <cstdio>
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

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

// An optional array of strings: nullopt when absent or null; every element must be a non-empty string.
std::optional<std::vector<std::string>> OptStringArray(const json::object& o, std::string_view key,
                                                       std::string_view where, std::size_t max_items) {
  const json::value* v = Find(o, key);
  if (!v || v->is_null()) return std::nullopt;
  std::string name = std::string(where) + std::string(key);
  if (!v->is_array()) throw Failure{"bad_request", name + " must be an array of strings"};
  const auto& arr = v->get_array();
  if (arr.size() > max_items)
    throw Failure{"bad_request", name + " has " + std::to_string(arr.size()) + " entries, at most " +
                                     std::to_string(max_items) + " are allowed"};
  std::vector<std::string> out;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    if (!arr[i].is_string())
      throw Failure{"bad_request", name + "[" + std::to_string(i) + "] must be a string"};
    out.emplace_back(arr[i].get_string());
  }
  return out;
}

// "a.b.c.d" in canonical form, or nullopt.
std::optional<std::string> CanonicalIpv4(const std::string& s) {
  auto a = ParseIpv4(s);
  if (!a) return std::nullopt;
  char buf[INET_ADDRSTRLEN];
  in_addr in{};
  in.s_addr = *a;
  if (!inet_ntop(AF_INET, &in, buf, sizeof buf)) return std::nullopt;
  return std::string(buf);
}

// A registry host: a DNS name (labels of [A-Za-z0-9-], not starting or ending with '-'), an IPv4 address, or
// an IPv6 address in brackets.
bool ValidRegistryHost(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  if (h.front() == '[') {
    if (h.back() != ']' || h.size() < 3) return false;
    std::string inner(h.substr(1, h.size() - 2));
    in6_addr a{};
    return inet_pton(AF_INET6, inner.c_str(), &a) == 1;
  }
  std::size_t start = 0;
  for (;;) {
    auto dot = h.find('.', start);
    std::string_view label =
        h.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// "host" or "host:port" (port 1-65535).
bool ValidHostPort(std::string_view hp) {
  std::string_view host = hp, port;
  auto colon = hp.rfind(':');
  auto bracket = hp.rfind(']');
  if (colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket)) {
    host = hp.substr(0, colon);
    port = hp.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)
      return false;
    int p = std::stoi(std::string(port));
    if (p < 1 || p > 65535) return false;
  }
  return ValidRegistryHost(host);
}

// A registry mirror URL as dockerd accepts it: http:// or https://, host[:port], nothing after an optional
// final "/". Returns dockerd's normalized form (with the final "/", as GET /info reports it).
std::optional<std::string> NormalizeMirror(std::string_view url) {
  if (url.size() > 256) return std::nullopt;
  std::string_view rest;
  if (url.substr(0, 7) == "http://")
    rest = url.substr(7);
  else if (url.substr(0, 8) == "https://")
    rest = url.substr(8);
  else
    return std::nullopt;
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find_first_of("/?#@") != std::string_view::npos || !ValidHostPort(rest)) return std::nullopt;
  return std::string(url.substr(0, url.size() - (url.back() == '/' ? 1 : 0))) + "/";
}

// An insecure registry: "host[:port]" as given, or an IPv4 CIDR in canonical form (host bits cleared, as
// dockerd reports it).
std::optional<std::string> NormalizeInsecureRegistry(std::string_view r) {
  if (r.empty() || r.size() > 256) return std::nullopt;
  auto slash = r.find('/');
  if (slash == std::string_view::npos)
    return ValidHostPort(r) ? std::optional<std::string>(std::string(r)) : std::nullopt;
  std::string_view p = r.substr(slash + 1);
  if (p.empty() || p.size() > 2 || p.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  int prefix = std::stoi(std::string(p));
  auto a = ParseIpv4(std::string(r.substr(0, slash)));
  if (!a || prefix > 32) return std::nullopt;
  uint32_t host = ntohl(*a);
  uint32_t mask = prefix == 0 ? 0 : ~uint32_t(0) << (32 - prefix);
  in_addr net{};
  net.s_addr = htonl(host & mask);
  char buf[INET_ADDRSTRLEN];
  if (!inet_ntop(AF_INET, &net, buf, sizeof buf)) return std::nullopt;
  return std::string(buf) + "/" + std::to_string(prefix);
}

bool IsCidr(const std::string& s) { return s.find('/') != std::string::npos; }

// The `docker` field of `identity`, validated.
struct DockerSettings {
  std::optional<std::vector<std::string>> mirrors;   // normalized; replaces "registry-mirrors"
  std::optional<std::vector<std::string>> insecure;  // normalized; replaces "insecure-registries"
  std::chrono::milliseconds timeout{kDefaultDockerReloadTimeoutMs};
};

DockerSettings ParseDockerSettings(const json::value& v) {
  if (!v.is_object()) throw Failure{"bad_request", "docker must be an object"};
  const auto& o = v.get_object();
  DockerSettings d;
  d.mirrors = OptStringArray(o, "registry_mirrors", "docker.", 16);
  if (d.mirrors) {
    for (std::size_t i = 0; i < d.mirrors->size(); ++i) {
      auto n = NormalizeMirror((*d.mirrors)[i]);
      if (!n)
        throw Failure{"bad_request",
                      "docker.registry_mirrors[" + std::to_string(i) +
                          "] must be an http:// or https:// URL of a host[:port] without path, "
                          "query or user (got \"" +
                          Printable((*d.mirrors)[i], 64) + "\")"};
      (*d.mirrors)[i] = *n;
    }
  }
  d.insecure = OptStringArray(o, "insecure_registries", "docker.", 64);
  if (d.insecure) {
    for (std::size_t i = 0; i < d.insecure->size(); ++i) {
      auto n = NormalizeInsecureRegistry((*d.insecure)[i]);
      if (!n)
        throw Failure{"bad_request", "docker.insecure_registries[" + std::to_string(i) +
                                         "] must be host[:port] or an IPv4 CIDR such as 10.0.0.0/8 (got \"" +
                                         Printable((*d.insecure)[i], 64) + "\")"};
      (*d.insecure)[i] = *n;
    }
  }
  if (!d.mirrors && !d.insecure)
    throw Failure{"bad_request", "docker must set registry_mirrors and/or insecure_registries"};
  auto t = OptInt(o, "timeout_ms", "docker.");
  if (t) {
    if (*t <= 0 || *t > kMaxDockerReloadTimeoutMs)
      throw Failure{"bad_request",
                    "docker.timeout_ms must be in 1.." + std::to_string(kMaxDockerReloadTimeoutMs)};
    d.timeout = std::chrono::milliseconds(*t);
  }
  return d;
}

// dockerd as found in /proc: pid, API socket and configuration file (from its command line, else defaults).
struct Dockerd {
  int pid = 0;  // 0: not running
  std::string socket;
  std::string config_file;
};

// Value of a flag in argv: "--name value", "--name=value", and for a short form "-H value" / "-Hvalue".
// Returns every occurrence in order.
std::vector<std::string> FlagValues(const std::vector<std::string>& argv, std::string_view long_name,
                                    std::string_view short_name = "") {
  std::vector<std::string> out;
  for (std::size_t i = 1; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == long_name || (!short_name.empty() && a == short_name)) {
      if (i + 1 < argv.size()) out.push_back(argv[++i]);
    } else if (a.size() > long_name.size() && a.compare(0, long_name.size(), long_name) == 0 &&
               a[long_name.size()] == '=') {
      out.push_back(a.substr(long_name.size() + 1));
    } else if (!short_name.empty() && a.size() > short_name.size() &&
               a.compare(0, short_name.size(), short_name) == 0) {
      std::string v = a.substr(short_name.size());
      if (!v.empty() && v[0] == '=') v.erase(0, 1);
      out.push_back(v);
    }
  }
  return out;
}

Dockerd FindDockerd(AgentContext& ctx) {
  Dockerd d;
  d.config_file = ctx.root + std::string(kDockerDaemonJson);
  auto procs = ctx.sys->FindProcesses("dockerd");
  if (procs.empty()) return d;
  d.pid = procs.front().pid;
  const auto& argv = procs.front().argv;
  auto cfg = FlagValues(argv, "--config-file");
  if (!cfg.empty() && !cfg.back().empty() && cfg.back()[0] == '/') d.config_file = cfg.back();
  for (const auto& h : FlagValues(argv, "--host", "-H")) {
    // Absolute paths only, as everywhere the agent connects (a relative one is dockerd's cwd's, not ours).
    if (h.rfind("unix://", 0) == 0 && h.size() > 7 && h[7] == '/') {
      d.socket = h.substr(7);
      break;
    }
  }
  return d;
}

// The first unix:// entry of daemon.json's "hosts" with an absolute path, or "".
std::string SocketFromDaemonJson(const json::object& cfg) {
  const json::value* hosts = Find(cfg, "hosts");
  if (!hosts || !hosts->is_array()) return "";
  for (const auto& h : hosts->get_array()) {
    if (!h.is_string()) continue;
    std::string_view s = h.get_string();
    if (s.substr(0, 7) == "unix://" && s.size() > 7 && s[7] == '/') return std::string(s.substr(7));
  }
  return "";
}

// True when GET /info's RegistryConfig shows exactly the wanted mirrors and insecure registries (dockerd
// always adds 127.0.0.0/8 to the insecure CIDRs, and lists docker.io among the index configs).
bool RegistryConfigMatches(const std::string& info_body, const DockerSettings& want) {
  std::error_code ec;
  json::value info = json::parse(info_body, ec);
  if (ec || !info.is_object()) return false;
  const json::value* rc = Find(info.get_object(), "RegistryConfig");
  if (!rc || !rc->is_object()) return false;
  const auto& reg = rc->get_object();
  auto strings = [](const json::value* v) {
    std::vector<std::string> out;
    if (v && v->is_array())
      for (const auto& e : v->get_array())
        if (e.is_string()) out.emplace_back(e.get_string());
    return out;
  };
  if (want.mirrors && strings(Find(reg, "Mirrors")) != *want.mirrors) return false;
  if (want.insecure) {
    std::vector<std::string> want_cidrs{"127.0.0.0/8"}, want_hosts;
    for (const auto& r : *want.insecure) {
      if (!IsCidr(r))
        want_hosts.push_back(r);
      else if (r != "127.0.0.0/8")
        want_cidrs.push_back(r);
    }
    auto have_cidrs = strings(Find(reg, "InsecureRegistryCIDRs"));
    std::vector<std::string> have_hosts;
    if (const json::value* ic = Find(reg, "IndexConfigs"); ic && ic->is_object()) {
      for (const auto& kv : ic->get_object()) {
        if (!kv.value().is_object()) continue;
        const json::value* secure = Find(kv.value().get_object(), "Secure");
        if (secure && secure->is_bool() && !secure->get_bool()) have_hosts.emplace_back(kv.key());
      }
    }
    auto same_set = [](std::vector<std::string> a, std::vector<std::string> b) {
      std::sort(a.begin(), a.end());
      a.erase(std::unique(a.begin(), a.end()), a.end());
      std::sort(b.begin(), b.end());
      b.erase(std::unique(b.begin(), b.end()), b.end());
      return a == b;
    };
    if (!same_set(have_cidrs, want_cidrs) || !same_set(have_hosts, want_hosts)) return false;
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

// Reads and parses the daemon.json that `identity` will merge into; part of validation (nothing changed yet).
json::object ReadDaemonJson(AgentContext& ctx, const std::string& path) {
  FileContent f = ctx.sys->ReadFile(path, kMaxDaemonJsonBytes);
  if (!f.exists) return {};
  if (!f.error.empty()) throw Failure{"failed", Printable("docker: " + f.error + "; nothing was changed")};
  if (f.truncated)
    throw Failure{"failed", Printable("docker: " + path + " is larger than " +
                                      std::to_string(kMaxDaemonJsonBytes) + " bytes; nothing was changed")};
  if (f.content.find_first_not_of(" \t\r\n") == std::string::npos) return {};
  std::error_code ec;
  json::value v = json::parse(f.content, ec);
  if (ec || !v.is_object())
    throw Failure{"failed",
                  Printable("docker: " + path + " is not a JSON object (" +
                            (ec ? ec.message() : std::string("not an object")) + "); nothing was changed")};
  return v.get_object();
}

// Merges the settings into daemon.json (only those keys), writes it atomically and makes a running dockerd
// apply it (SIGHUP; dockerd reloads registry-mirrors and insecure-registries live), confirmed through GET
// /info.
json::object ApplyDocker(AgentContext& ctx, const DockerSettings& want, const Dockerd& d, json::object cfg) {
  using Clock = std::chrono::steady_clock;
  auto to_array = [](const std::vector<std::string>& v) {
    json::array a;
    for (const auto& s : v) a.emplace_back(s);
    return a;
  };
  // Always written as lists, possibly empty: dockerd's reload only changes keys present in the file.
  if (want.mirrors) cfg["registry-mirrors"] = to_array(*want.mirrors);
  if (want.insecure) cfg["insecure-registries"] = to_array(*want.insecure);
  if (auto s = ctx.sys->ReplaceFile(d.config_file, json::serialize(cfg) + "\n", 0644); !s.ok())
    throw Failure{"failed", Printable("docker: " + s.error)};
  json::object r;
  r["config_file"] = Printable(d.config_file, 4096);  // from /proc/<pid>/cmdline: any bytes
  if (d.pid == 0) {
    r["dockerd"] = "not_running";  // it reads the file when it starts
    return r;
  }
  std::string sock = d.socket;
  if (sock.empty()) sock = SocketFromDaemonJson(cfg);
  if (sock.empty()) sock = std::string(kDefaultDockerSocket);
  r["pid"] = d.pid;
  r["socket"] = Printable(sock, 4096);
  const auto deadline = Clock::now() + want.timeout;
  auto left = [&] {
    return std::max<int64_t>(
        1, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
  };
  auto expired = [&] { return Clock::now() >= deadline; };
  std::string last_error;
  auto ping = [&] {
    auto t = std::chrono::milliseconds(std::min<int64_t>(2000, left()));
    HttpExchange x = ctx.sys->UnixHttp(sock, BuildHttpRequest("GET", "/_ping", std::nullopt), t, 64);
    if (!x.ok()) {
      last_error = x.error;
      return false;
    }
    if (x.response.status != 200) last_error = sock + " answered \"" + x.response.status_line + "\"";
    return x.response.status == 200;
  };
  auto applied = [&] {
    auto t = std::chrono::milliseconds(std::min<int64_t>(5000, left()));
    HttpExchange x =
        ctx.sys->UnixHttp(sock, BuildHttpRequest("GET", "/info", std::nullopt), t, kMaxStreamBytes);
    if (!x.ok()) {
      last_error = x.error;
      return false;
    }
    if (x.response.status != 200) {
      last_error = "GET /info answered \"" + x.response.status_line + "\"";
      return false;
    }
    last_error = "GET /info does not show the new registry configuration yet";
    return RegistryConfigMatches(x.response.body, want);
  };

  // dockerd handles SIGHUP only once it serves its API; before that the signal would kill it (Go's default).
  if (!ping()) {
    // The image's init still reloads dockerd once it answers, after this write (fcwarm-init.sh): done here.
    if (ctx.sys->PathExists(ctx.root + std::string(kDockerReloadPendingMarker))) {
      r["dockerd"] = "reload_pending";
      return r;
    }
    bool up = false;
    while (!up && !expired()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(100, left())));
      up = ping();
    }
    if (!up)
      throw Failure{"failed",
                    Printable("docker: dockerd (pid " + std::to_string(d.pid) + ") did not answer within " +
                              std::to_string(want.timeout.count()) + " ms (" + last_error + "); " +
                              d.config_file + " was written but not applied")};
  }
  // A clone of a snapshot whose daemon already had these settings: nothing to reload.
  if (applied()) {
    r["dockerd"] = "unchanged";
    return r;
  }
  if (auto s = ctx.sys->SendSignal(d.pid, SIGHUP); !s.ok())
    throw Failure{"failed",
                  Printable("docker: SIGHUP to dockerd (pid " + std::to_string(d.pid) + "): " + s.error)};
  while (!expired()) {
    if (applied()) {
      r["dockerd"] = "reloaded";
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(50, left())));
  }
  throw Failure{"failed", Printable("docker: dockerd (pid " + std::to_string(d.pid) +
                                    ") did not apply the registry configuration within " +
                                    std::to_string(want.timeout.count()) + " ms of SIGHUP (" + last_error +
                                    "; its log says why, e.g. an option given both as a flag and in " +
                                    d.config_file + ")")};
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
  // glibc reads at most 3 nameservers (MAXNS).
  auto dns = OptStringArray(req, "dns", "", 3);
  if (dns) {
    if (dns->empty()) throw Failure{"bad_request", "dns must list 1 to 3 IPv4 nameserver addresses"};
    for (std::size_t i = 0; i < dns->size(); ++i) {
      auto c = CanonicalIpv4((*dns)[i]);
      uint32_t host = c ? ntohl(*ParseIpv4(*c)) : 0;
      if (!c || host == 0 || host == 0xffffffffu || (host >> 28) == 0xe)
        throw Failure{"bad_request", "dns[" + std::to_string(i) + "] must be a unicast IPv4 address (got \"" +
                                         Printable((*dns)[i], 64) + "\")"};
      (*dns)[i] = *c;
    }
  }
  std::optional<DockerSettings> docker;
  Dockerd dockerd;
  json::object daemon_json;
  if (const json::value* dv = Find(req, "docker"); dv && !dv->is_null()) {
    docker = ParseDockerSettings(*dv);
    // Reads, still before any change: which daemon and file, and a file that cannot be merged into.
    dockerd = FindDockerd(ctx);
    daemon_json = ReadDaemonJson(ctx, dockerd.config_file);
  }

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
  if (dns) {
    std::string text = "# written by fcwarm-agent (identity)\n";
    for (const auto& ns : *dns) text += "nameserver " + ns + "\n";
    check("dns", ctx.sys->ReplaceFile(ctx.root + std::string(kResolvConf), text, 0644));
  }
  json::value docker_result = nullptr;
  if (docker) docker_result = ApplyDocker(ctx, *docker, dockerd, std::move(daemon_json));

  r["hostname"] = Printable(ctx.sys->Hostname());
  r["iface"] = iface;
  r["mac"] = mac_text ? json::value(*mac_text) : json::value(nullptr);
  r["ip_cidr"] = cidr ? json::value(*cidr) : json::value(nullptr);
  r["entropy_bytes"] = static_cast<int64_t>(entropy.size());
  r["clock_set"] = clock_ns.has_value();
  if (dns) {
    json::array a;
    for (const auto& ns : *dns) a.emplace_back(ns);
    r["dns"] = std::move(a);
  } else {
    r["dns"] = nullptr;
  }
  r["docker"] = std::move(docker_result);
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

// The fields of the `docker` and `docker_start` ops, validated; every message names its field.
struct DockerCall {
  std::string method, path, socket, request;
  std::chrono::milliseconds timeout;
};

DockerCall ParseDockerCall(const json::object& req) {
  DockerCall c;
  c.method = ReqString(req, "method");
  if (!ValidHttpMethod(c.method))
    throw Failure{"bad_request", "method must be one of GET, POST, PUT, DELETE, HEAD (got \"" +
                                     Printable(c.method, 16) + "\")"};
  c.path = ReqString(req, "path");
  if (!ValidHttpTarget(c.path))
    throw Failure{"bad_request", "path must start with \"/\" and be at most " +
                                     std::to_string(kMaxHttpTargetBytes) +
                                     " bytes of printable ASCII without space or '#'"};
  std::optional<std::string> body;
  if (auto b = OptString(req, "body_b64")) {
    body = Base64Decode(*b);
    if (!body) throw Failure{"bad_request", "body_b64 is not valid base64"};
  }
  c.socket = OptString(req, "socket").value_or(std::string(kDefaultDockerSocket));
  // 107: sockaddr_un.sun_path holds 108 bytes including the NUL.
  if (c.socket.empty() || c.socket[0] != '/' || c.socket.size() > 107 || c.socket.find('\0') != std::string::npos)
    throw Failure{"bad_request", "socket must be an absolute path of at most 107 bytes"};
  c.timeout = ParseTimeout(req, "", kDefaultDockerTimeoutMs);
  c.request = BuildHttpRequest(c.method, c.path, body);
  return c;
}

json::object OpDocker(const json::object& req, AgentContext& ctx) {
  DockerCall c = ParseDockerCall(req);
  HttpExchange x = ctx.sys->UnixHttp(c.socket, c.request, c.timeout, kMaxStreamBytes);
  if (!x.ok()) {
    std::string what = "docker " + c.method + " " + Printable(c.path, 128) + " via " + x.error;
    throw Failure{x.timed_out ? "timeout" : "failed", Printable(what)};
  }
  json::object r;
  r["status"] = x.response.status;
  r["body_b64"] = Base64Encode(x.response.body);
  r["truncated"] = x.response.truncated;
  return r;
}

// `launch`: hands a launch spec to a parked container's launcher (guest/launcher/fcwarm-launch.c).
std::vector<std::string> OptStrings(const json::object& o, std::string_view key) {
  const json::value* v = Find(o, key);
  std::vector<std::string> out;
  if (!v || v->is_null()) return out;
  if (!v->is_array()) throw Failure{"bad_request", std::string(key) + " must be an array of strings"};
  const auto& arr = v->get_array();
  for (std::size_t i = 0; i < arr.size(); ++i) {
    if (!arr[i].is_string())
      throw Failure{"bad_request", std::string(key) + "[" + std::to_string(i) + "] must be a string"};
    std::string s(arr[i].get_string());
    if (s.find('\0') != std::string::npos)
      throw Failure{"bad_request", std::string(key) + "[" + std::to_string(i) + "] contains a NUL byte"};
    out.push_back(std::move(s));
  }
  return out;
}

// An absolute path without NUL bytes, or empty when absent.
std::string OptAbsolutePath(const json::object& req, std::string_view key) {
  std::string p = OptString(req, key).value_or("");
  if (!p.empty() && (p[0] != '/' || p.find('\0') != std::string::npos || p.size() > 4096))
    throw Failure{"bad_request", std::string(key) + " must be an absolute path"};
  return p;
}

json::object OpLaunch(const json::object& req, AgentContext& ctx) {
  std::string channel = ReqString(req, "channel");
  std::string_view name = std::string_view(channel).substr(std::min(channel.size(), kParkedDir.size()));
  bool valid = channel.rfind(kParkedDir, 0) == 0 && !name.empty() && name.size() <= 128 && name != "." &&
               name != "..";
  for (char c : name)
    valid = valid && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '.' || c == '-');
  if (!valid)
    throw Failure{"bad_request", "channel must be " + std::string(kParkedDir) + "NAME with NAME of [A-Za-z0-9._-]"};
  const json::value* pv = Find(req, "probe");
  if (pv && !pv->is_bool()) throw Failure{"bad_request", "probe must be a boolean"};
  bool probe = pv && pv->get_bool();
  auto timeout = ParseTimeout(req, "", kDefaultLaunchTimeoutMs);
  std::string spec;
  if (!probe) {
    auto argv = ReqArgv(req, "argv");
    auto env = OptStrings(req, "env");
    for (std::size_t i = 0; i < env.size(); ++i) {
      auto eq = env[i].find('=');
      if (eq == std::string::npos || eq == 0)
        throw Failure{"bad_request", "env[" + std::to_string(i) + "] must be NAME=value"};
    }
    std::string cwd = OptAbsolutePath(req, "cwd");
    std::string hostname_file = OptAbsolutePath(req, "hostname_file");
    std::string user = OptString(req, "user").value_or("");
    if (user.find('\0') != std::string::npos || user.size() > 256)
      throw Failure{"bad_request", "user must be user[:group] of at most 256 bytes"};
    // "fcwarm-launch/1" NUL, then KEY NUL VALUE NUL records (the launcher's format).
    spec.append("fcwarm-launch/1");
    spec.push_back('\0');
    auto record = [&spec](std::string_view k, std::string_view v) {
      spec.append(k);
      spec.push_back('\0');
      spec.append(v);
      spec.push_back('\0');
    };
    for (const auto& a : argv) record("arg", a);
    for (const auto& e : env) record("env", e);
    if (!cwd.empty()) record("cwd", cwd);
    if (!user.empty()) record("user", user);
    if (!hostname_file.empty()) record("hostfile", hostname_file);
    if (spec.size() > kMaxLaunchSpecBytes)
      throw Failure{"bad_request", "argv, env, cwd and user take more than " +
                                       std::to_string(kMaxLaunchSpecBytes) + " bytes"};
  }
  LaunchOutcome o = ctx.sys->DeliverLaunch(ctx.root + channel, spec, timeout, probe);
  if (!o.error.empty()) throw Failure{"failed", Printable(o.error)};
  json::object r;
  if (probe) {
    r["waiting"] = o.waiting;
    return r;
  }
  if (!o.waiting)
    throw Failure{"not_waiting", "no launcher is waiting on " + Printable(channel, 160) + " (within " +
                                     std::to_string(timeout.count()) + " ms)"};
  if (o.timed_out)
    throw Failure{"timeout", "the launcher on " + Printable(channel, 160) + " took the spec but did not start the "
                             "command within " + std::to_string(timeout.count()) + " ms"};
  if (!o.exec_ok) throw Failure{"launch_failed", Printable(o.exec_error)};
  r["started"] = true;
  return r;
}

uint64_t ReqJob(const json::object& req) {
  const json::value* v = Find(req, "job");
  if (!v) throw Failure{"bad_request", "job is required"};
  if (v->is_uint64()) return v->get_uint64();
  if (v->is_int64() && v->get_int64() > 0) return static_cast<uint64_t>(v->get_int64());
  throw Failure{"bad_request", "job must be a positive integer"};
}

}  // namespace

// ---- streaming Docker requests (docker_start / docker_read / docker_cancel) ----

struct DockerJobs::Impl {
  using Clock = std::chrono::steady_clock;
  struct Job {
    std::mutex mu;
    std::condition_variable cv;
    std::string pending;     // body bytes not read yet
    uint64_t offset = 0;     // body offset of pending[0]
    uint64_t dropped = 0;    // bytes dropped because the reader fell behind
    int status = 0;          // HTTP status, 0 until the head arrived
    bool done = false;
    bool cancelled = false;
    std::string error;       // why the exchange failed (done)
    bool timed_out = false;  // the request's deadline passed (done)
    Clock::time_point last_read = Clock::now();
    std::thread thread;
  };
  std::mutex mu;
  std::map<uint64_t, std::shared_ptr<Job>> jobs;
  std::vector<std::shared_ptr<Job>> cancelled;  // cancelled jobs whose thread may still run
  uint64_t next_id = 1;

  // Cancels and forgets jobs nobody read for kDockerJobIdleMs; returns the threads to join (outside mu).
  std::vector<std::shared_ptr<Job>> ExpireLocked() {
    std::vector<std::shared_ptr<Job>> gone;
    auto now = Clock::now();
    for (auto it = jobs.begin(); it != jobs.end();) {
      auto& j = it->second;
      std::lock_guard<std::mutex> jl(j->mu);
      if (now - j->last_read > std::chrono::milliseconds(kDockerJobIdleMs)) {
        j->cancelled = true;
        gone.push_back(j);
        it = jobs.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = cancelled.begin(); it != cancelled.end();) {
      std::lock_guard<std::mutex> jl((*it)->mu);
      if ((*it)->done) {
        gone.push_back(*it);
        it = cancelled.erase(it);
      } else {
        ++it;
      }
    }
    return gone;
  }
  static void Join(const std::vector<std::shared_ptr<Job>>& js) {
    for (const auto& j : js)
      if (j->thread.joinable()) j->thread.join();
  }
};

DockerJobs::DockerJobs() : impl_(std::make_unique<Impl>()) {}

DockerJobs::~DockerJobs() {
  std::vector<std::shared_ptr<Impl::Job>> all;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    for (auto& [id, j] : impl_->jobs) {
      std::lock_guard<std::mutex> jl(j->mu);
      j->cancelled = true;
      all.push_back(j);
    }
    impl_->jobs.clear();
    all.insert(all.end(), impl_->cancelled.begin(), impl_->cancelled.end());
    impl_->cancelled.clear();
  }
  Impl::Join(all);
}

HttpExchange SystemOps::UnixHttpStream(const std::string& socket_path, const std::string& request,
                                       std::chrono::milliseconds timeout,
                                       const std::function<void(const HttpResponse&)>& on_head,
                                       const std::function<bool(std::string_view)>& on_body) {
  HttpExchange x = UnixHttp(socket_path, request, timeout, kMaxStreamBytes);
  if (!x.ok()) return x;
  on_head(x.response);
  std::string body = std::move(x.response.body);
  x.response.body.clear();
  if (!body.empty() && !on_body(body)) {
    x.error = socket_path + ": stopped by the reader";
    x.response = HttpResponse{};
  }
  return x;
}

namespace {

json::object OpDockerStart(const json::object& req, AgentContext& ctx) {
  DockerCall c = ParseDockerCall(req);
  auto& impl = ctx.jobs->impl();
  auto job = std::make_shared<DockerJobs::Impl::Job>();
  uint64_t id = 0;
  std::vector<std::shared_ptr<DockerJobs::Impl::Job>> expired;
  {
    std::lock_guard<std::mutex> l(impl.mu);
    expired = impl.ExpireLocked();
    if (impl.jobs.size() >= kMaxDockerJobs)
      throw Failure{"busy", "already " + std::to_string(kMaxDockerJobs) +
                                " docker jobs; read them to the end or cancel one first"};
    id = impl.next_id++;
    impl.jobs[id] = job;
    SystemOps* sys = ctx.sys;
    std::lock_guard<std::mutex> jl(job->mu);  // the thread starts once the job is complete
    job->thread = std::thread([job, sys, c] {
      auto on_head = [&](const HttpResponse& r) {
        std::lock_guard<std::mutex> l(job->mu);
        job->status = r.status;
        job->cv.notify_all();
      };
      auto on_body = [&](std::string_view piece) {
        std::lock_guard<std::mutex> l(job->mu);
        if (job->cancelled) return false;
        job->pending.append(piece);
        if (job->pending.size() > kMaxDockerJobBuffer) {  // the reader fell behind: drop the oldest
          std::size_t over = job->pending.size() - kMaxDockerJobBuffer;
          job->pending.erase(0, over);
          job->offset += over;
          job->dropped += over;
        }
        job->cv.notify_all();
        return true;
      };
      HttpExchange x = sys->UnixHttpStream(c.socket, c.request, c.timeout, on_head, on_body);
      std::lock_guard<std::mutex> l(job->mu);
      if (!x.ok()) {
        job->error = Printable("docker " + c.method + " " + Printable(c.path, 128) + " via " + x.error);
        job->timed_out = x.timed_out;
      }
      job->done = true;
      job->cv.notify_all();
    });
  }
  DockerJobs::Impl::Join(expired);
  json::object r;
  r["job"] = id;
  return r;
}

json::object OpDockerRead(const json::object& req, AgentContext& ctx) {
  uint64_t id = ReqJob(req);
  int64_t wait_ms = OptInt(req, "wait_ms", "").value_or(0);
  if (wait_ms < 0 || wait_ms > kMaxDockerReadWaitMs)
    throw Failure{"bad_request", "wait_ms must be in 0.." + std::to_string(kMaxDockerReadWaitMs)};
  auto& impl = ctx.jobs->impl();
  std::shared_ptr<DockerJobs::Impl::Job> job;
  {
    std::lock_guard<std::mutex> l(impl.mu);
    auto it = impl.jobs.find(id);
    if (it == impl.jobs.end())
      throw Failure{"not_found", "no docker job " + std::to_string(id) + " (never started, cancelled, idle for " +
                                     std::to_string(kDockerJobIdleMs / 1000) + " s, or read to its end)"};
    job = it->second;
  }
  json::object r;
  bool finished = false;
  {
    std::unique_lock<std::mutex> l(job->mu);
    // Waits for new bytes or the end, at most wait_ms.
    job->cv.wait_for(l, std::chrono::milliseconds(wait_ms), [&] { return job->done || !job->pending.empty(); });
    std::size_t n = std::min(job->pending.size(), kMaxDockerReadBytes);
    r["status"] = job->status;
    r["offset"] = job->offset;
    r["body_b64"] = Base64Encode(std::string_view(job->pending).substr(0, n));
    job->pending.erase(0, n);
    job->offset += n;
    r["dropped"] = job->dropped;
    job->last_read = DockerJobs::Impl::Clock::now();
    finished = job->done && job->pending.empty();
    r["done"] = finished;
    if (finished && !job->error.empty()) {
      r["error"] = job->error;
      r["timed_out"] = job->timed_out;
    }
  }
  if (finished) {  // read to its end: forget it
    {
      std::lock_guard<std::mutex> l(impl.mu);
      impl.jobs.erase(id);
    }
    if (job->thread.joinable()) job->thread.join();
  }
  return r;
}

json::object OpDockerCancel(const json::object& req, AgentContext& ctx) {
  uint64_t id = ReqJob(req);
  auto& impl = ctx.jobs->impl();
  std::shared_ptr<DockerJobs::Impl::Job> job;
  {
    std::lock_guard<std::mutex> l(impl.mu);
    auto it = impl.jobs.find(id);
    if (it != impl.jobs.end()) {
      job = it->second;
      impl.jobs.erase(it);
    }
  }
  json::object r;
  r["cancelled"] = job != nullptr;
  if (job) {
    {
      std::lock_guard<std::mutex> l(job->mu);
      job->cancelled = true;
    }
    // The exchange stops at its next body piece, or at its own deadline: joined later, not waited for here.
    std::lock_guard<std::mutex> l(impl.mu);
    impl.cancelled.push_back(job);
  }
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
    else if (op == "docker_start")
      result = OpDockerStart(req, ctx);
    else if (op == "docker_read")
      result = OpDockerRead(req, ctx);
    else if (op == "docker_cancel")
      result = OpDockerCancel(req, ctx);
    else if (op == "launch")
      result = OpLaunch(req, ctx);
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
