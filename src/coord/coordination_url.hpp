// Private: the `--coordination` URL of cluster coordination (docs/architecture.md, "Cluster coordination
// (etcd)"): `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::coord {

/// The key prefix when the URL names none.
inline constexpr std::string_view kDefaultKeyPrefix = "/fcwarm/";

/// One etcd client endpoint (a member's client URL, plain HTTP).
struct EtcdEndpoint {
  std::string host;  // a DNS name, dotted IPv4, or IPv6 without brackets
  uint16_t port = 0;

  /// "host:port" ("[v6]:port" for IPv6), as errors name the endpoint.
  std::string HostPort() const;
  /// "http://host:port", the base of the gRPC gateway's URLs.
  std::string BaseUrl() const;
  bool operator==(const EtcdEndpoint&) const = default;
};

/// A parsed coordination URL.
struct CoordinationConfig {
  std::vector<EtcdEndpoint> endpoints;        // at least one, in the URL's order, no duplicates
  std::string key_prefix{kDefaultKeyPrefix};  // starts and ends with '/', e.g. "/fcwarm/" or "/a/b/"
};

/// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
///
/// HOST is a DNS name, a dotted IPv4 address or a bracketed IPv6 address ("[::1]"); PORT is required
/// (1-65535). PREFIX is '/'-separated segments of [A-Za-z0-9._-] (no empty, "." or ".." segment); it is
/// normalised to start and end with '/', and defaults to "/fcwarm/". Credentials ("user@"), a query or a
/// fragment are refused.
/// \return InvalidArgument naming the URL and what is wrong with it (scheme, host, port, prefix).
Result<CoordinationConfig> ParseCoordinationUrl(std::string_view url);

}  // namespace fcwarm::coord
