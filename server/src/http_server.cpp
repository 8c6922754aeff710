#include "http_server.hpp"

#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <uv.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <unordered_map>
#include <vector>

#include "util/worker_pool.hpp"

namespace fcwarm::server {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kReadBufferSize = 64 * 1024;
constexpr size_t kMaxWriteBacklog = 1u << 20;  // stop dispatching while more than this is unsent
constexpr uint64_t kLingerMs = 2000;           // after a closing error: drain input this long before closing

std::string Sanitize(std::string_view s, size_t max) {
  std::string o;
  for (unsigned char c : s.substr(0, max)) {
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      static const char* hex = "0123456789abcdef";
      o += "\\x";
      o += hex[c >> 4];
      o += hex[c & 15];
    } else {
      o += static_cast<char>(c);
    }
  }
  if (s.size() > max) o += "...";
  return o;
}

bool ValidRequestId(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_' || c == '.' || c == ':';
    if (!ok) return false;
  }
  return true;
}

std::string PeerName(uv_tcp_t* tcp) {
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char ip[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    uv_ip4_name(a, ip, sizeof ip);
    port = ntohs(a->sin_port);
    return std::string(ip) + ":" + std::to_string(port);
  }
  auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
  uv_ip6_name(a, ip, sizeof ip);
  port = ntohs(a->sin6_port);
  return "[" + std::string(ip) + "]:" + std::to_string(port);
}

}  // namespace

struct HttpServer::Impl {
  enum class TimerKind { kNone, kIdle, kRequest, kLinger, kWrite };

  struct Conn {
    explicit Conn(const ParserLimits& l) : parser(l) {}
    uv_tcp_t tcp{};
    uv_timer_t timer{};
    uv_shutdown_t shutdown_req{};
    Impl* srv = nullptr;
    uint64_t id = 0;
    RequestParser parser;
    std::deque<HttpRequest> queue;
    std::string peer;
    bool busy = false;
    bool closing = false;
    bool reading = false;
    bool eof = false;
    bool close_after_write = false;
    bool lingering = false;
    bool error_sent = false;
    int writes_pending = 0;
    int handles_open = 0;
    size_t timer_armed_for = 0;
    TimerKind timer_kind = TimerKind::kNone;
  };

  struct WriteReq {
    uv_write_t req{};
    std::string data;
    Conn* conn = nullptr;
  };

  struct Completion {
    uint64_t conn_id = 0;
    HttpResponse response;
    std::string method;
    std::string target;
    std::string request_id;
    bool keep_alive = true;
    Clock::time_point started;
  };

  Impl(ServerOptions o, Handler h, ServerStats* s)
      : opts(std::move(o)), handler(std::move(h)), stats(s), rng(std::random_device{}()) {}

  ServerOptions opts;
  Handler handler;
  ServerStats* stats;
  std::function<void()> on_shutdown;

  uv_loop_t loop{};
  bool loop_inited = false;
  uv_tcp_t listener{};
  bool listening = false;
  uv_async_t async{};
  uv_signal_t sigterm{};
  uv_signal_t sigint{};
  uv_timer_t shutdown_timer{};
  bool shutdown_timer_started = false;
  int bound_port = 0;

  std::unique_ptr<util::WorkerPool> pool;
  std::mutex mu;
  std::vector<Completion> completions;
  std::atomic<bool> shutdown_requested{false};

  std::unordered_map<uint64_t, Conn*> conns;
  uint64_t next_conn_id = 1;
  size_t jobs_in_flight = 0;
  bool shutting_down = false;
  bool finished = false;
  std::mt19937_64 rng;
  char read_buf[kReadBufferSize];

  // ---- helpers -----------------------------------------------------------------------------------------

  std::string NewRequestId() {
    static const char* hex = "0123456789abcdef";
    uint64_t v = rng();
    std::string s(16, '0');
    for (int i = 15; i >= 0; --i, v >>= 4) s[i] = hex[v & 15];
    return s;
  }

  void Write(Conn* c, std::string data) {
    auto* w = new WriteReq;
    w->data = std::move(data);
    w->conn = c;
    w->req.data = w;
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1, &OnWrite);
    if (rc != 0) {
      delete w;
      Close(c);
      return;
    }
    ++c->writes_pending;
  }

  void StopReading(Conn* c) {
    if (c->reading) {
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
      c->reading = false;
    }
  }

  void StartReading(Conn* c) {
    if (!c->reading && !c->closing) {
      if (uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), &OnAlloc, &OnRead) == 0) c->reading = true;
    }
  }

  void ArmTimer(Conn* c, TimerKind kind, uint64_t ms) {
    c->timer_kind = kind;
    uv_timer_start(&c->timer, &OnTimer, ms, 0);
  }

  void UpdateTimer(Conn* c) {
    if (c->closing || c->lingering) return;
    if (!c->busy && c->timer_kind == TimerKind::kWrite && c->tcp.write_queue_size > kMaxWriteBacklog) return;
    if (c->busy || !c->queue.empty()) {
      uv_timer_stop(&c->timer);
      c->timer_kind = TimerKind::kNone;
      return;
    }
    if (c->parser.in_progress()) {
      if (c->timer_kind != TimerKind::kRequest || c->timer_armed_for != c->parser.started()) {
        c->timer_armed_for = c->parser.started();
        ArmTimer(c, TimerKind::kRequest, static_cast<uint64_t>(opts.request_timeout.count()));
      }
      return;
    }
    ArmTimer(c, TimerKind::kIdle, static_cast<uint64_t>(opts.idle_timeout.count()));
  }

  // Sends an error produced by the connection layer (not the API) and closes afterwards.
  void SendErrorAndClose(Conn* c, int status, const std::string& code, const std::string& message) {
    if (c->error_sent || c->closing) return;
    c->error_sent = true;
    HttpResponse r = ErrorResponse(status, code, message);
    std::string rid = NewRequestId();
    if (stats) stats->CountResponse(status);
    spdlog::info("request_id={} conn={} peer={} status={} error={} msg=\"{}\"", rid, c->id, c->peer, status,
                 code, Sanitize(message, 200));
    StopReading(c);
    c->close_after_write = true;
    Write(c, SerializeResponse(r, false, rid));
  }

  void Close(Conn* c) {
    if (c->closing) return;
    c->closing = true;
    conns.erase(c->id);
    if (stats) stats->connections_open.fetch_sub(1, std::memory_order_relaxed);
    uv_timer_stop(&c->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), &OnConnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), &OnConnHandleClosed);
  }

  // After the last response of a closing connection: send FIN, then drain input briefly so the peer reads the
  // response instead of a reset (the kernel resets when unread input is discarded by close()).
  void FinishConnection(Conn* c) {
    if (c->closing || c->lingering) return;
    c->lingering = true;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, reinterpret_cast<uv_stream_t*>(&c->tcp), &OnShutdownDone) != 0) {
      Close(c);
      return;
    }
    ArmTimer(c, TimerKind::kLinger, kLingerMs);
  }

  void MaybeDispatch(Conn* c) {
    if (c->closing || c->lingering || c->busy) return;
    if (c->close_after_write) {
      if (c->writes_pending == 0) FinishConnection(c);
      return;
    }
    if (c->tcp.write_queue_size > kMaxWriteBacklog) {
      // The peer does not read its responses: wait for OnWrite, but not forever. Each completed write re-arms
      // the deadline, so only a reader that makes no progress for the idle timeout is cut off.
      ArmTimer(c, TimerKind::kWrite, static_cast<uint64_t>(opts.idle_timeout.count()));
      return;
    }
    if (!c->queue.empty()) {
      HttpRequest req = std::move(c->queue.front());
      c->queue.pop_front();
      const std::string* rid = req.Header("x-request-id");
      req.request_id = rid && ValidRequestId(*rid) ? *rid : NewRequestId();
      req.peer = c->peer;
      c->busy = true;
      ++jobs_in_flight;
      uint64_t conn_id = c->id;
      auto started = Clock::now();
      bool ok = pool->Submit([this, conn_id, started, r = std::move(req)]() mutable {
        Completion done;
        done.conn_id = conn_id;
        done.method = r.method;
        done.target = r.target;
        done.request_id = r.request_id;
        done.keep_alive = r.keep_alive;
        done.started = started;
        try {
          done.response = handler(r);
        } catch (const std::exception& e) {
          done.response = ErrorResponse(500, "internal", std::string("unexpected error: ") + e.what());
        }
        // uv_async_send under the lock: CheckDone() closes the handle under the same lock, after the last
        // completion was handled, so no worker touches it afterwards.
        std::lock_guard lock(mu);
        completions.push_back(std::move(done));
        uv_async_send(&async);
      });
      if (!ok) {
        --jobs_in_flight;
        c->busy = false;
        SendErrorAndClose(c, 503, "unavailable", "the server is shutting down");
        return;
      }
      UpdateTimer(c);
      if (!c->eof && !c->parser.failed() && !shutting_down && c->queue.size() < opts.max_pipelined / 2 + 1) {
        StartReading(c);
      }
      return;
    }
    // Nothing parsed is waiting.
    if (c->parser.failed()) {
      SendErrorAndClose(c, c->parser.error_status(), c->parser.error_code(), c->parser.error_message());
      return;
    }
    if (c->eof || shutting_down) {
      if (c->writes_pending == 0) {
        Close(c);
      } else {
        c->close_after_write = true;
      }
      return;
    }
    StartReading(c);
    UpdateTimer(c);
  }

  void HandleRead(Conn* c, ssize_t nread, const uv_buf_t* buf) {
    if (c->closing) return;
    if (c->lingering) {
      if (nread < 0) Close(c);  // peer finished (EOF) or reset: done draining
      return;
    }
    if (nread == UV_EOF) {
      c->eof = true;
      StopReading(c);
      c->parser.FeedEof(c->queue);
      if (c->parser.failed() && c->parser.started() > 0 && c->queue.empty() && !c->busy) {
        // A request was cut short by the peer: nobody is left to read an error.
        Close(c);
        return;
      }
      MaybeDispatch(c);
      return;
    }
    if (nread < 0) {
      Close(c);
      return;
    }
    if (nread == 0) return;
    c->parser.Feed(buf->base, static_cast<size_t>(nread), c->queue);
    if (c->parser.failed() || c->queue.size() >= opts.max_pipelined) StopReading(c);
    MaybeDispatch(c);
    UpdateTimer(c);
  }

  void HandleCompletion(Completion& done) {
    --jobs_in_flight;
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - done.started).count();
    int status = done.response.status;
    if (stats) stats->CountResponse(status);
    auto it = conns.find(done.conn_id);
    if (it == conns.end()) {
      spdlog::info(
          "request_id={} method={} target=\"{}\" status={} duration_ms={:.3f} dropped=connection_closed",
          done.request_id, done.method, Sanitize(done.target, 256), status, ms);
      return;
    }
    Conn* c = it->second;
    c->busy = false;
    if (status >= 500) {
      spdlog::warn(
          "request_id={} conn={} peer={} method={} target=\"{}\" status={} duration_ms={:.3f} error={}",
          done.request_id, c->id, c->peer, done.method, Sanitize(done.target, 256), status, ms,
          done.response.error_code);
    } else {
      spdlog::info("request_id={} conn={} peer={} method={} target=\"{}\" status={} duration_ms={:.3f}{}{}",
                   done.request_id, c->id, c->peer, done.method, Sanitize(done.target, 256), status, ms,
                   done.response.error_code.empty() ? "" : " error=", done.response.error_code);
    }
    bool more_queued = !c->queue.empty();
    bool keep = done.keep_alive && !done.response.close && !(shutting_down && !more_queued) &&
                !(c->eof && !more_queued && !c->parser.failed());
    if (!keep) {
      c->queue.clear();
      StopReading(c);
      c->close_after_write = true;
    }
    Write(c, SerializeResponse(done.response, keep, done.request_id, done.method == "HEAD"));
    if (!c->closing) MaybeDispatch(c);
  }

  void BeginShutdown() {
    if (shutting_down) return;
    shutting_down = true;
    spdlog::info("event=shutdown_begin connections={} in_flight={}", conns.size(), jobs_in_flight);
    if (on_shutdown) on_shutdown();
    if (listening) {
      uv_close(reinterpret_cast<uv_handle_t*>(&listener), nullptr);
      listening = false;
    }
    std::vector<Conn*> all;
    for (auto& [id, c] : conns) all.push_back(c);
    for (Conn* c : all) {
      StopReading(c);
      if (!c->busy && c->queue.empty() && !c->lingering && c->writes_pending == 0) {
        Close(c);
      } else if (!c->busy && c->queue.empty()) {
        c->close_after_write = true;
      }
    }
    uv_timer_start(&shutdown_timer, &OnShutdownTimer, static_cast<uint64_t>(opts.shutdown_timeout.count()),
                   0);
    shutdown_timer_started = true;
    CheckDone();
  }

  void CheckDone() {
    if (!shutting_down || finished) return;
    if (!conns.empty() || jobs_in_flight != 0) return;
    finished = true;
    spdlog::info("event=shutdown_drained");
    {
      std::lock_guard lock(mu);
      uv_close(reinterpret_cast<uv_handle_t*>(&async), nullptr);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&shutdown_timer), nullptr);
    if (opts.handle_signals) {
      uv_close(reinterpret_cast<uv_handle_t*>(&sigterm), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&sigint), nullptr);
    }
  }

  // ---- libuv callbacks -----------------------------------------------------------------------------------

  static void OnAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(h->data);
    *buf = uv_buf_init(c->srv->read_buf, sizeof c->srv->read_buf);
  }

  static void OnRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(s->data);
    c->srv->HandleRead(c, nread, buf);
  }

  static void OnWrite(uv_write_t* req, int status) {
    auto* w = static_cast<WriteReq*>(req->data);
    Conn* c = w->conn;
    delete w;
    --c->writes_pending;
    if (c->closing) return;
    if (status < 0) {
      c->srv->Close(c);
      return;
    }
    c->srv->MaybeDispatch(c);
  }

  static void OnShutdownDone(uv_shutdown_t* req, int status) {
    auto* c = static_cast<Conn*>(req->data);
    if (c->closing) return;
    if (status < 0) {
      c->srv->Close(c);
      return;
    }
    if (c->eof) {
      c->srv->Close(c);
      return;
    }
    // Drain (and discard) whatever the peer still sends until it closes or the linger timer fires.
    c->reading = false;
    c->srv->StartReading(c);
  }

  static void OnTimer(uv_timer_t* t) {
    auto* c = static_cast<Conn*>(t->data);
    Impl* s = c->srv;
    if (c->closing) return;
    switch (c->timer_kind) {
      case TimerKind::kIdle:
      case TimerKind::kWrite:
        if (s->stats) s->stats->timeouts_idle.fetch_add(1, std::memory_order_relaxed);
        s->Close(c);
        break;
      case TimerKind::kRequest:
        if (s->stats) s->stats->timeouts_request.fetch_add(1, std::memory_order_relaxed);
        if (!c->busy && c->queue.empty()) {
          s->SendErrorAndClose(
              c, 408, "request_timeout",
              "the request did not arrive within " + std::to_string(s->opts.request_timeout.count()) + " ms");
          c->timer_kind = TimerKind::kNone;
          // If the write cannot complete (peer not reading), the linger timer or the OS will end it.
          uv_timer_start(&c->timer, &OnTimer, kLingerMs, 0);
          c->timer_kind = TimerKind::kLinger;
        }
        break;
      case TimerKind::kLinger:
      case TimerKind::kNone:
        s->Close(c);
        break;
    }
  }

  static void OnConnHandleClosed(uv_handle_t* h) {
    auto* c = static_cast<Conn*>(h->data);
    if (--c->handles_open == 0) {
      Impl* s = c->srv;
      delete c;
      s->CheckDone();
    }
  }

  static void OnConnection(uv_stream_t* server, int status) {
    auto* s = static_cast<Impl*>(server->data);
    if (status < 0) {
      spdlog::warn("event=accept_failed error={}", uv_strerror(status));
      return;
    }
    auto* c = new Conn(s->opts.limits);
    c->srv = s;
    c->id = s->next_conn_id++;
    uv_tcp_init(&s->loop, &c->tcp);
    c->tcp.data = c;
    uv_timer_init(&s->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
      c->closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), &OnConnHandleClosed);
      uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), &OnConnHandleClosed);
      return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->peer = PeerName(&c->tcp);
    bool over = s->conns.size() >= s->opts.max_connections;
    s->conns[c->id] = c;
    if (s->stats) {
      s->stats->connections_open.fetch_add(1, std::memory_order_relaxed);
      s->stats->connections_total.fetch_add(1, std::memory_order_relaxed);
    }
    c->parser.on_expect_continue = [s, c] {
      if (!c->busy && c->queue.empty()) s->Write(c, "HTTP/1.1 100 Continue\r\n\r\n");
    };
    if (over) {
      if (s->stats) s->stats->connections_rejected.fetch_add(1, std::memory_order_relaxed);
      s->SendErrorAndClose(c, 503, "unavailable",
                           "too many connections (limit " + std::to_string(s->opts.max_connections) + ")");
      s->ArmTimer(c, TimerKind::kLinger, kLingerMs);
      return;
    }
    s->StartReading(c);
    s->UpdateTimer(c);
  }

  static void OnAsync(uv_async_t* a) {
    auto* s = static_cast<Impl*>(a->data);
    std::vector<Completion> batch;
    {
      std::lock_guard lock(s->mu);
      batch.swap(s->completions);
    }
    for (auto& done : batch) s->HandleCompletion(done);
    if (s->shutdown_requested.load() && !s->shutting_down) s->BeginShutdown();
    s->CheckDone();
  }

  static void OnSignal(uv_signal_t* h, int signum) {
    auto* s = static_cast<Impl*>(h->data);
    spdlog::info("event=signal signal={}", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    s->BeginShutdown();
  }

  static void OnShutdownTimer(uv_timer_t* t) {
    auto* s = static_cast<Impl*>(t->data);
    spdlog::warn("event=shutdown_timeout closing={} in_flight={}", s->conns.size(), s->jobs_in_flight);
    std::vector<Conn*> all;
    for (auto& [id, c] : s->conns) all.push_back(c);
    for (Conn* c : all) s->Close(c);
    s->CheckDone();
  }
};

HttpServer::HttpServer(ServerOptions options, Handler handler, ServerStats* stats)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler), stats)) {}

HttpServer::~HttpServer() {
  if (impl_->loop_inited && !impl_->finished) {
    // Run() was never called (or failed): close what Listen() opened.
    if (impl_->listening) uv_close(reinterpret_cast<uv_handle_t*>(&impl_->listener), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&impl_->async), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&impl_->shutdown_timer), nullptr);
    if (impl_->opts.handle_signals) {
      uv_close(reinterpret_cast<uv_handle_t*>(&impl_->sigterm), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&impl_->sigint), nullptr);
    }
    uv_run(&impl_->loop, UV_RUN_DEFAULT);
  }
  if (impl_->pool) impl_->pool->Shutdown(true);
  if (impl_->loop_inited) uv_loop_close(&impl_->loop);
}

void HttpServer::set_on_shutdown(std::function<void()> f) { impl_->on_shutdown = std::move(f); }

int HttpServer::port() const { return impl_->bound_port; }

Status HttpServer::Listen() {
  Impl& s = *impl_;
  if (!s.loop_inited) {
    if (int rc = uv_loop_init(&s.loop); rc != 0)
      return Status::Internal(std::string("uv_loop_init: ") + uv_strerror(rc));
    s.loop_inited = true;
    uv_async_init(&s.loop, &s.async, &Impl::OnAsync);
    s.async.data = &s;
    uv_timer_init(&s.loop, &s.shutdown_timer);
    s.shutdown_timer.data = &s;
    if (s.opts.handle_signals) {
      uv_signal_init(&s.loop, &s.sigterm);
      uv_signal_init(&s.loop, &s.sigint);
      s.sigterm.data = &s;
      s.sigint.data = &s;
      uv_signal_start(&s.sigterm, &Impl::OnSignal, SIGTERM);
      uv_signal_start(&s.sigint, &Impl::OnSignal, SIGINT);
    }
  }
  sockaddr_storage addr{};
  if (uv_ip4_addr(s.opts.host.c_str(), s.opts.port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(s.opts.host.c_str(), s.opts.port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    return Status::InvalidArgument("bind: '" + s.opts.host + "' is not an IPv4 or IPv6 address");
  }
  uv_tcp_init(&s.loop, &s.listener);
  s.listener.data = &s;
  s.listening = true;
  if (int rc = uv_tcp_bind(&s.listener, reinterpret_cast<sockaddr*>(&addr), 0); rc != 0) {
    return Status::Unavailable("bind " + s.opts.host + ":" + std::to_string(s.opts.port) + ": " +
                               uv_strerror(rc));
  }
  if (int rc = uv_listen(reinterpret_cast<uv_stream_t*>(&s.listener), 511, &Impl::OnConnection); rc != 0) {
    return Status::Unavailable("listen " + s.opts.host + ":" + std::to_string(s.opts.port) + ": " +
                               uv_strerror(rc));
  }
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(&s.listener, reinterpret_cast<sockaddr*>(&bound), &len);
  s.bound_port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                             : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  s.pool = std::make_unique<util::WorkerPool>("fcw-http", s.opts.workers);
  return Status::Ok();
}

void HttpServer::Run() {
  Impl& s = *impl_;
  if (s.shutdown_requested.load()) s.BeginShutdown();
  uv_run(&s.loop, UV_RUN_DEFAULT);
  s.pool->Shutdown(true);
  s.finished = true;
}

void HttpServer::Shutdown() {
  impl_->shutdown_requested.store(true);
  if (impl_->loop_inited) uv_async_send(&impl_->async);
}

}  // namespace fcwarm::server
