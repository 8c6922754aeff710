// The REST API: authentication, target decoding, routing, request decoding, library calls, JSON responses.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "containers.hpp"
#include "fcwarm/service.hpp"
#include "http.hpp"
#include "metrics.hpp"
#include "router.hpp"

namespace fcwarm::server {

struct ApiOptions {
  /// Bearer token required on every route but /healthz; empty disables authentication. Default: empty.
  std::string auth_token;
};

/// Turns one HttpRequest into one HttpResponse. Handle() blocks on the library; call it off the loop thread.
///
/// Thread safety: Handle() may be called concurrently from any number of threads.
class Api {
 public:
  /// \param service, containers Must outlive the Api. \param stats May be null.
  Api(Service& service, ContainerService& containers, ApiOptions options, const ServerStats* stats);

  HttpResponse Handle(const HttpRequest& request);

  /// Constant-time comparison of a presented token with the configured one.
  static bool TokenMatches(std::string_view presented, std::string_view expected);

 private:
  HttpResponse Dispatch(const HttpRequest& req, const RouteMatch& m, const Target& t);
  HttpResponse Healthz();
  HttpResponse Version();
  HttpResponse Metrics();
  HttpResponse CreateSnapshot(const HttpRequest& req);
  HttpResponse ListSnapshots(const Target& t);
  HttpResponse GetSnapshot(const std::string& id);
  HttpResponse RebuildSnapshot(const HttpRequest& req, const std::string& id);
  HttpResponse DeleteSnapshot(const std::string& id);
  HttpResponse CreateImage(const HttpRequest& req);
  HttpResponse ListImages();
  HttpResponse GetImage(const std::string& id);
  HttpResponse DeleteImage(const std::string& id);
  HttpResponse CreateContainer(const HttpRequest& req);
  HttpResponse ListContainers(const Target& t);
  HttpResponse GetContainer(const std::string& id);
  HttpResponse StopContainer(const HttpRequest& req, const std::string& id);
  HttpResponse WaitContainer(const HttpRequest& req, const Target& t, const std::string& id);
  HttpResponse ContainerLogs(const std::string& id);
  HttpResponse DeleteContainer(const std::string& id);
  HttpResponse ListEvents(const Target& t);
  HttpResponse Pool();
  HttpResponse Repository();
  HttpResponse RepositoryGc(const HttpRequest& req);

  Service& service_;
  ContainerService& containers_;
  ApiOptions options_;
  const ServerStats* stats_;
  MetricsCollector metrics_;
};

/// The JSON error response of a library Status (status code from HttpStatusOf, code from StatusCodeName).
HttpResponse StatusResponse(const Status& status);

}  // namespace fcwarm::server
