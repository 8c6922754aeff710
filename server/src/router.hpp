// Request-target decoding (percent-decoding, hostile segments, query strings) and route matching.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::server {

/// A decoded request target.
struct Target {
  std::vector<std::string> segments;  ///< Percent-decoded path segments ("/v1/images" → {"v1","images"}).
  std::map<std::string, std::string> query;  ///< Decoded query parameters (each at most once).
};

/// Percent-decodes one path segment or query component. `plus_is_space` for query strings.
/// \return InvalidArgument naming `field` for a bad escape.
Result<std::string> PercentDecode(std::string_view field, std::string_view in, bool plus_is_space);

/// Splits and decodes a request target in origin form ("/path?query"). Rejects: targets not starting with
/// '/', encoded '/' (%2F), NUL bytes (%00), control characters, "." and ".." segments (also when encoded),
/// empty segments inside the path, repeated query parameters.
/// \return The target, or InvalidArgument naming "path" or the query parameter.
Result<Target> ParseTarget(std::string_view target);

/// The route table. Patterns are segment lists; "{}" matches one segment, returned in `params`.
enum class RouteId {
  kHealthz,
  kMetrics,
  kVersion,
  kSnapshots,
  kSnapshot,
  kSnapshotRebuild,
  kImages,
  kImage,
  kContainers,
  kContainer,
  kContainerStop,
  kContainerWait,
  kContainerLogs,
  kEvents,
  kPool,
  kRepository,
  kRepositoryGc,
};

/// The outcome of matching a decoded path and a method.
struct RouteMatch {
  enum class Kind { kFound, kNotFound, kMethodNotAllowed } kind = Kind::kNotFound;
  RouteId route = RouteId::kHealthz;
  std::vector<std::string> params;  ///< Values of "{}" segments, in order.
  std::string param_name;           ///< Name of the first path parameter (for error messages), e.g. "id".
  std::string allow;                ///< For kMethodNotAllowed: the Allow header value.
  bool requires_auth = true;        ///< False for /healthz.
  std::string name;                 ///< Route name for logs, e.g. "GET /v1/images/{id}".
};

/// Matches a method and decoded path segments against the route table.
RouteMatch MatchRoute(std::string_view method, const std::vector<std::string>& segments);

}  // namespace fcwarm::server
