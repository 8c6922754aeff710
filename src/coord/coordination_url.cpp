#include "coord/coordination_url.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>

namespace fcwarm::coord {
namespace {

constexpr std::string_view kScheme = "etcd://";

bool IsDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A DNS name: labels of [A-Za-z0-9-] (1-63 characters, no leading or trailing '-'), 253 characters at most.
bool IsHostName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    std::string_view label =
        s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// "host:port" or "[v6]:port"; `quoted` is the whole URL for messages.
Result<EtcdEndpoint> ParseEndpoint(std::string_view item, const std::string& quoted) {
  auto bad = [&](const std::string& what) {
    return Status::InvalidArgument("coordination URL " + quoted + ": endpoint '" + std::string(item) +
                                   "': " + what);
  };
  if (item.empty()) return bad("empty (expected HOST:PORT)");
  EtcdEndpoint ep;
  std::string_view port;
  if (item.front() == '[') {
    size_t close = item.find(']');
    if (close == std::string_view::npos) return bad("unterminated '[' of an IPv6 address");
    ep.host = std::string(item.substr(1, close - 1));
    in6_addr a6{};
    if (ep.host.empty() || inet_pton(AF_INET6, ep.host.c_str(), &a6) != 1) {
      return bad("'" + ep.host + "' is not an IPv6 address");
    }
    std::string_view rest = item.substr(close + 1);
    if (rest.empty()) return bad("missing port (expected [ADDRESS]:PORT)");
    if (rest.front() != ':') return bad("unexpected text after ']'");
    port = rest.substr(1);
  } else {
    size_t colon = item.rfind(':');
    if (colon == std::string_view::npos) return bad("missing port (expected HOST:PORT)");
    ep.host = std::string(item.substr(0, colon));
    port = item.substr(colon + 1);
    if (ep.host.empty()) return bad("missing host (expected HOST:PORT)");
    if (ep.host.find(':') != std::string::npos)
      return bad("an IPv6 address must be in brackets, e.g. [::1]:2379");
    bool numeric = std::all_of(ep.host.begin(), ep.host.end(),
                               [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
    if (numeric) {
      in_addr a4{};
      if (inet_pton(AF_INET, ep.host.c_str(), &a4) != 1)
        return bad("'" + ep.host + "' is not an IPv4 address");
    } else if (!IsHostName(ep.host)) {
      return bad("'" + ep.host + "' is not a valid host name (letters, digits, '-' and '.')");
    }
  }
  if (port.empty()) return bad("missing port (expected HOST:PORT)");
  if (!IsDigits(port) || port.size() > 5) return bad("port '" + std::string(port) + "' is not a number");
  unsigned long p = std::stoul(std::string(port));
  if (p < 1 || p > 65535) return bad("port " + std::string(port) + " is out of range (1-65535)");
  ep.port = static_cast<uint16_t>(p);
  return ep;
}

Result<std::string> ParsePrefix(std::string_view path, const std::string& quoted) {
  // `path` is empty or starts with '/'.
  std::string out = "/";
  size_t start = 1;
  while (start < path.size()) {
    size_t slash = path.find('/', start);
    std::string_view seg =
        path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    auto bad = [&](const std::string& what) {
      return Status::InvalidArgument("coordination URL " + quoted + ": key prefix '" + std::string(path) +
                                     "': " + what);
    };
    if (seg.empty()) return bad("empty segment ('//')");
    if (seg == "." || seg == "..") return bad("'.' and '..' segments are not allowed");
    for (char c : seg) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
        return bad(std::string("character '") + c + "' is not allowed (letters, digits, '.', '_', '-')");
      }
    }
    out.append(seg);
    out.push_back('/');
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (out == "/") return std::string(kDefaultKeyPrefix);
  return out;
}

}  // namespace

std::string EtcdEndpoint::HostPort() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

std::string EtcdEndpoint::BaseUrl() const { return "http://" + HostPort(); }

Result<CoordinationConfig> ParseCoordinationUrl(std::string_view url) {
  const std::string quoted = "'" + std::string(url) + "'";
  if (url.empty()) return Status::InvalidArgument("coordination URL is empty (expected etcd://HOST:PORT)");
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) {
    return Status::InvalidArgument("coordination URL " + quoted +
                                   ": expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]");
  }
  if (url.substr(0, sep + 3) != kScheme) {
    return Status::InvalidArgument("coordination URL " + quoted + ": unsupported scheme '" +
                                   std::string(url.substr(0, sep)) + "' (only etcd:// is supported)");
  }
  std::string_view rest = url.substr(kScheme.size());
  for (char c : rest) {
    if (c == '?' || c == '#') {
      return Status::InvalidArgument("coordination URL " + quoted + ": a query or fragment is not allowed");
    }
    if (c == '@') {
      return Status::InvalidArgument("coordination URL " + quoted +
                                     ": credentials in the URL are not supported");
    }
    if (static_cast<unsigned char>(c) <= ' ' || static_cast<unsigned char>(c) >= 0x7f) {
      return Status::InvalidArgument("coordination URL " + quoted +
                                     ": contains a space or a control character");
    }
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (authority.empty()) {
    return Status::InvalidArgument("coordination URL " + quoted +
                                   ": no endpoint (expected etcd://HOST:PORT)");
  }
  CoordinationConfig cfg;
  size_t start = 0;
  while (true) {
    size_t comma = authority.find(',', start);
    std::string_view item =
        authority.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    auto ep = ParseEndpoint(item, quoted);
    if (!ep.ok()) return ep.status();
    if (std::find(cfg.endpoints.begin(), cfg.endpoints.end(), *ep) != cfg.endpoints.end()) {
      return Status::InvalidArgument("coordination URL " + quoted + ": endpoint " + ep->HostPort() +
                                     " is given twice");
    }
    cfg.endpoints.push_back(std::move(ep).value());
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  auto prefix = ParsePrefix(path, quoted);
  if (!prefix.ok()) return prefix.status();
  cfg.key_prefix = std::move(prefix).value();
  return cfg;
}

}  // namespace fcwarm::coord
