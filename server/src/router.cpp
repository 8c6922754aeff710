#include "router.hpp"

#include <array>

namespace fcwarm::server {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct RouteDef {
  const char* method;
  std::array<const char*, 4> pattern;  // nullptr-terminated
  RouteId id;
  const char* name;
  bool auth;
};

constexpr RouteDef kRoutes[] = {
    {"GET", {"healthz", nullptr}, RouteId::kHealthz, "GET /healthz", false},
    {"GET", {"metrics", nullptr}, RouteId::kMetrics, "GET /metrics", true},
    {"GET", {"v1", "version", nullptr}, RouteId::kVersion, "GET /v1/version", true},
    {"GET", {"v1", "runtime-snapshots", nullptr}, RouteId::kSnapshots, "GET /v1/runtime-snapshots", true},
    {"POST", {"v1", "runtime-snapshots", nullptr}, RouteId::kSnapshots, "POST /v1/runtime-snapshots", true},
    {"GET", {"v1", "runtime-snapshots", "{}"}, RouteId::kSnapshot, "GET /v1/runtime-snapshots/{id}", true},
    {"DELETE",
     {"v1", "runtime-snapshots", "{}"},
     RouteId::kSnapshot,
     "DELETE /v1/runtime-snapshots/{id}",
     true},
    {"POST",
     {"v1", "runtime-snapshots", "{}", "rebuild"},
     RouteId::kSnapshotRebuild,
     "POST /v1/runtime-snapshots/{id}/rebuild",
     true},
    {"GET", {"v1", "images", nullptr}, RouteId::kImages, "GET /v1/images", true},
    {"POST", {"v1", "images", nullptr}, RouteId::kImages, "POST /v1/images", true},
    {"GET", {"v1", "images", "{}"}, RouteId::kImage, "GET /v1/images/{id}", true},
    {"DELETE", {"v1", "images", "{}"}, RouteId::kImage, "DELETE /v1/images/{id}", true},
    {"GET", {"v1", "containers", nullptr}, RouteId::kContainers, "GET /v1/containers", true},
    {"POST", {"v1", "containers", nullptr}, RouteId::kContainers, "POST /v1/containers", true},
    {"GET", {"v1", "containers", "{}"}, RouteId::kContainer, "GET /v1/containers/{id}", true},
    {"DELETE", {"v1", "containers", "{}"}, RouteId::kContainer, "DELETE /v1/containers/{id}", true},
    {"POST",
     {"v1", "containers", "{}", "stop"},
     RouteId::kContainerStop,
     "POST /v1/containers/{id}/stop",
     true},
    {"POST",
     {"v1", "containers", "{}", "wait"},
     RouteId::kContainerWait,
     "POST /v1/containers/{id}/wait",
     true},
    {"GET",
     {"v1", "containers", "{}", "logs"},
     RouteId::kContainerLogs,
     "GET /v1/containers/{id}/logs",
     true},
    {"GET", {"v1", "events", nullptr}, RouteId::kEvents, "GET /v1/events", true},
    {"GET", {"v1", "pool", nullptr}, RouteId::kPool, "GET /v1/pool", true},
    {"GET", {"v1", "repository", nullptr}, RouteId::kRepository, "GET /v1/repository", true},
    {"POST", {"v1", "repository", "gc", nullptr}, RouteId::kRepositoryGc, "POST /v1/repository/gc", true},
};

bool PatternMatches(const RouteDef& r, const std::vector<std::string>& segs,
                    std::vector<std::string>* params) {
  size_t n = 0;
  while (n < r.pattern.size() && r.pattern[n] != nullptr) ++n;
  if (n != segs.size()) return false;
  std::vector<std::string> p;
  for (size_t i = 0; i < n; ++i) {
    std::string_view pat = r.pattern[i];
    if (pat == "{}") {
      p.push_back(segs[i]);
    } else if (pat != segs[i]) {
      return false;
    }
  }
  if (params) *params = std::move(p);
  return true;
}

}  // namespace

Result<std::string> PercentDecode(std::string_view field, std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) {
        return Status::InvalidArgument(std::string(field) + ": truncated percent-escape");
      }
      int hi = HexValue(in[i + 1]);
      int lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return Status::InvalidArgument(std::string(field) + ": invalid percent-escape");
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

Result<Target> ParseTarget(std::string_view target) {
  Target t;
  if (target.empty() || target[0] != '/') {
    return Status::InvalidArgument("path: the request target must start with '/'");
  }
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  size_t hash = query.find('#');
  if (hash != std::string_view::npos) query = query.substr(0, hash);

  // Path segments. A trailing slash is tolerated ("/v1/images/"), empty inner segments are not.
  std::string_view rest = path.substr(1);
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (!rest.empty()) {
    size_t pos = 0;
    while (true) {
      size_t slash = rest.find('/', pos);
      std::string_view raw =
          rest.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
      if (raw.empty()) return Status::InvalidArgument("path: empty path segment ('//')");
      auto dec = PercentDecode("path", raw, false);
      if (!dec.ok()) return dec.status();
      const std::string& s = *dec;
      if (s.find('/') != std::string::npos) {
        return Status::InvalidArgument("path: an encoded '/' (%2F) is not allowed in a path segment");
      }
      if (s.find('\\') != std::string::npos) {
        return Status::InvalidArgument("path: a '\\' is not allowed in a path segment");
      }
      for (unsigned char ch : s) {
        if (ch == 0) return Status::InvalidArgument("path: a NUL byte (%00) is not allowed");
        if (ch < 0x20 || ch == 0x7f)
          return Status::InvalidArgument("path: control characters are not allowed");
      }
      if (s == "." || s == "..") {
        return Status::InvalidArgument("path: '.' and '..' segments are not allowed");
      }
      t.segments.push_back(s);
      if (slash == std::string_view::npos) break;
      pos = slash + 1;
    }
  }

  // Query string.
  size_t pos = 0;
  while (pos <= query.size() && !query.empty()) {
    size_t amp = query.find('&', pos);
    std::string_view pair =
        query.substr(pos, amp == std::string_view::npos ? std::string_view::npos : amp - pos);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      auto key = PercentDecode("query", pair.substr(0, eq), true);
      if (!key.ok()) return key.status();
      auto val = PercentDecode("query",
                               eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1), true);
      if (!val.ok()) return val.status();
      for (unsigned char ch : *key + *val) {
        if (ch < 0x20 || ch == 0x7f) {
          return Status::InvalidArgument("query: control characters (including NUL) are not allowed");
        }
      }
      if (key->empty()) return Status::InvalidArgument("query: empty parameter name");
      if (t.query.count(*key)) {
        return Status::InvalidArgument(*key + ": the query parameter is given more than once");
      }
      t.query.emplace(std::move(*key), std::move(*val));
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  return t;
}

RouteMatch MatchRoute(std::string_view method, const std::vector<std::string>& segments) {
  RouteMatch m;
  std::string allow;
  for (const auto& r : kRoutes) {
    std::vector<std::string> params;
    if (!PatternMatches(r, segments, &params)) continue;
    if (method == r.method) {
      m.kind = RouteMatch::Kind::kFound;
      m.route = r.id;
      m.params = std::move(params);
      m.param_name = "id";
      m.requires_auth = r.auth;
      m.name = r.name;
      return m;
    }
    if (!allow.empty()) allow += ", ";
    allow += r.method;
    m.requires_auth = m.requires_auth && r.auth;
  }
  if (!allow.empty()) {
    m.kind = RouteMatch::Kind::kMethodNotAllowed;
    m.allow = allow;
  }
  return m;
}

}  // namespace fcwarm::server
