// The libuv HTTP/1.1 server: one loop thread accepts and parses, a worker pool runs the handler (which may
// block on the library), responses return to the loop thread through uv_async and are written in request
// order (pipelining). Keep-alive, limits, idle/slow-client timeouts, a connection cap, graceful shutdown.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "fcwarm/status.hpp"
#include "http.hpp"
#include "metrics.hpp"
#include "request_parser.hpp"

namespace fcwarm::server {

struct ServerOptions {
  std::string host = "127.0.0.1";  ///< IPv4 or IPv6 literal to bind.
  int port = 18080;                ///< TCP port; 0 picks a free one (see HttpServer::port()).
  ParserLimits limits;             ///< URL/header/body limits.
  /// Close a connection that has no request in progress for this long. Default: 60 s.
  std::chrono::milliseconds idle_timeout{60000};
  /// A request must arrive completely within this time of its first byte (slow clients get 408). Default: 30
  /// s.
  std::chrono::milliseconds request_timeout{30000};
  /// After SIGTERM, how long in-flight requests may take before their connections are closed. Default: 30 s.
  std::chrono::milliseconds shutdown_timeout{30000};
  size_t max_connections = 1024;  ///< Further connections get 503 and are closed.
  unsigned workers = 8;           ///< Threads running handlers.
  size_t max_pipelined = 32;      ///< Parsed-but-unanswered requests per connection before reading pauses.
  bool handle_signals = true;     ///< SIGTERM/SIGINT start a graceful shutdown.
};

/// Thread safety: Listen() and Run() from one thread; Shutdown() from any thread.
class HttpServer {
 public:
  /// Runs on a worker thread; must not throw.
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  /// \param stats May be null; must outlive the server.
  HttpServer(ServerOptions options, Handler handler, ServerStats* stats);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// Binds and listens. \return Unavailable when the address cannot be bound, InvalidArgument for a bad host.
  Status Listen();
  /// The bound port (valid after Listen()).
  int port() const;
  /// Serves until a shutdown completes: the listener is closed, every in-flight request answered (or the
  /// shutdown timeout passed) and every connection closed. Worker threads are joined before it returns.
  void Run();
  /// Starts a graceful shutdown (thread-safe, idempotent).
  void Shutdown();
  /// Called on the loop thread when a shutdown begins (e.g. to stop background work).
  void set_on_shutdown(std::function<void()> f);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcwarm::server
