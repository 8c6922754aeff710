// Guest channel (src/guest/stream_channel.*) against a scripted agent on a Unix socket: id matching, stale
// and garbage lines, deadlines, reply cap, reconnects, error mapping, base64, the docker op. No VM needed
// (label `unit`).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "guest/stream_channel.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace fcwarm;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A fake agent: accepts connections one at a time and answers each request line according to its op.
class FakeAgent {
 public:
  FakeAgent() {
    path_ = (fs::temp_directory_path() /
             ("fcw-chan-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++) + ".sock"))
                .string();
    ::unlink(path_.c_str());
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof(a.sun_path) - 1);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(listen_fd_, 4) == 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeAgent() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    thread_.join();
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  int connections() const { return connections_.load(); }
  // The docker op requests received, in order.
  std::vector<json::object> docker_requests() {
    std::lock_guard<std::mutex> l(mu_);
    return docker_requests_;
  }
  std::vector<json::object> identity_requests() {
    std::lock_guard<std::mutex> l(mu_);
    return identity_requests_;
  }

 private:
  void Serve() {
    while (!stop_) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      ++connections_;
      std::string buf;
      char chunk[4096];
      bool open = true;
      while (open && !stop_) {
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n <= 0) break;
        buf.append(chunk, static_cast<size_t>(n));
        size_t nl;
        while ((nl = buf.find('\n')) != std::string::npos) {
          std::string line = buf.substr(0, nl);
          buf.erase(0, nl + 1);
          if (!Answer(fd, line)) {
            open = false;
            break;
          }
        }
      }
      ::close(fd);
    }
  }

  static void Send(int fd, const std::string& s) { (void)::send(fd, s.data(), s.size(), MSG_NOSIGNAL); }

  // Returns false to drop the connection.
  bool Answer(int fd, const std::string& line) {
    auto v = json::parse(line).as_object();
    int64_t id = v["id"].as_int64();
    std::string op(v["op"].as_string());
    auto ok = [&](json::object result) {
      Send(fd, json::serialize(json::object{{"v", 1}, {"id", id}, {"ok", true}, {"result", result}}) + "\n");
    };
    if (op == "ping") {
      // Noise first (each line counts against the channel's max_unsolicited_lines): a reply to an id never
      // sent, a garbage line, an error for an unparsable request; then the answer.
      Send(fd, R"({"v":1,"id":999999,"ok":true,"result":{"hostname":"stale"}})"
               "\n");
      Send(fd, "garbage that is not json\n");
      Send(fd, R"({"v":1,"id":null,"ok":false,"error":{"code":"bad_request","message":"x"}})"
               "\n");
      ok({{"agent_version", "0.1.0"},
          {"protocol", 1},
          {"boot_id", "b"},
          {"uptime_ms", 5},
          {"hostname", "h"}});
    } else if (op == "exec") {
      const auto& argv = v["argv"].as_array();
      std::string first(argv[0].as_string());
      if (first == "silent") return true;  // never answers
      if (first == "huge") {
        Send(fd, std::string(3u << 20, 'x'));  // no newline: an endless line
        return true;
      }
      if (first == "hangup") return false;
      std::string in = v.contains("stdin_b64") ? std::string(v["stdin_b64"].as_string()) : "";
      ok({{"exit_code", 3}, {"stdout_b64", in}, {"stderr_b64", "ZXJy"}, {"truncated", false}});
    } else if (op == "quiesce") {
      Send(fd, json::serialize(json::object{{"v", 1},
                                            {"id", id},
                                            {"ok", false},
                                            {"error", {{"code", "failed"}, {"message", "sync failed"}}}}) +
                   "\n");
    } else if (op == "docker") {
      {
        std::lock_guard<std::mutex> l(mu_);
        docker_requests_.push_back(v);
      }
      std::string path(v["path"].as_string());
      auto err = [&](const char* code, const std::string& message) {
        Send(fd,
             json::serialize(json::object{
                 {"v", 1}, {"id", id}, {"ok", false}, {"error", {{"code", code}, {"message", message}}}}) +
                 "\n");
      };
      if (path == "/echo") {
        ok({{"status", 201},
            {"body_b64", v.contains("body_b64") ? v["body_b64"] : json::value("")},
            {"truncated", false}});
      } else if (path == "/big") {
        // A 1 MiB body (the agent's cap) is a ~1.4 MB reply line.
        std::string b64((1u << 20) / 3 * 4 + 4, 'Q');
        ok({{"status", 200}, {"body_b64", b64}, {"truncated", true}});
      } else if (path == "/timeout") {
        err("timeout", "docker GET /timeout via /var/run/docker.sock: no complete response within 5 ms");
      } else if (path == "/down") {
        err("failed", "docker GET /down via /var/run/docker.sock: connect: No such file or directory");
      } else if (path == "/nostatus") {
        ok({{"body_b64", ""}});
      } else {
        ok({{"status", 404}, {"body_b64", "eyJtZXNzYWdlIjoibm8ifQ=="}, {"truncated", false}});
      }
    } else if (op == "identity") {
      {
        std::lock_guard<std::mutex> l(mu_);
        identity_requests_.push_back(v);
      }
      ok({{"hostname", v["hostname"]},
          {"entropy_bytes", v.contains("entropy_b64") ? 3 : 0},
          {"clock_set", false},
          {"dns", v.contains("dns") ? v["dns"] : json::value(nullptr)},
          {"docker", v.contains("docker") ? json::value(json::object{{"dockerd", "reloaded"}})
                                          : json::value(nullptr)}});
    } else {
      Send(fd,
           json::serialize(json::object{
               {"v", 1}, {"id", id}, {"ok", false}, {"error", {{"code", "unknown_op"}, {"message", op}}}}) +
               "\n");
    }
    return true;
  }

  static inline std::atomic<int> counter_{0};
  std::string path_;
  int listen_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::mutex mu_;
  std::vector<json::object> docker_requests_;
  std::vector<json::object> identity_requests_;
};

std::unique_ptr<GuestChannel> Channel(const FakeAgent& agent, guest::StreamChannelOptions o = {}) {
  std::string path = agent.path();
  return guest::MakeStreamGuestChannel(
      [path](std::chrono::milliseconds t) { return guest::ConnectUnixStream(path, t); }, o);
}

}  // namespace

TEST_CASE("guest channel: skips stale replies and noise, matches by id, keeps one connection") {
  FakeAgent agent;
  auto ch = Channel(agent);
  for (int i = 0; i < 3; ++i) {
    auto r = ch->Ping(2s);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    CHECK(r->hostname == "h");
    CHECK(r->protocol == 1);
    CHECK(r->uptime_ms == 5);
  }
  CHECK(agent.connections() == 1);
}

TEST_CASE("guest channel: base64 both ways, identity, error mapping") {
  FakeAgent agent;
  auto ch = Channel(agent);
  ExecRequest ex;
  ex.argv = {"cat"};
  ex.stdin_data = std::string("\x00\x01\xff binary \n", 12);
  auto r = ch->Exec(ex, 2s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->exit_code == 3);
  CHECK(r->stdout_data == ex.stdin_data);
  CHECK(r->stderr_data == "err");
  IdentityRequest id;
  id.hostname = "clone-1";
  id.entropy = "abc";
  auto ir = ch->SetIdentity(id, 2s);
  REQUIRE(ir.ok());
  CHECK(ir->hostname == "clone-1");
  CHECK(ir->entropy_bytes == 3);
  auto q = ch->Quiesce(2s);
  CHECK(q.code() == StatusCode::kUnavailable);
  CHECK(q.message().find("sync failed") != std::string::npos);
  RuntimeCheck rc;
  auto rr = ch->RuntimeReady(rc, 2s);
  CHECK(rr.status().code() == StatusCode::kFailedPrecondition);  // the fake does not know runtime_ready
  ExecRequest big;
  big.argv = {"cat"};
  big.stdin_data = std::string(70000, 'a');
  CHECK(ch->Exec(big, 2s).status().code() == StatusCode::kInvalidArgument);
  ExecRequest none;
  CHECK(ch->Exec(none, 2s).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("guest channel: identity sends dns and docker settings only when set") {
  FakeAgent agent;
  auto ch = Channel(agent);
  IdentityRequest plain;
  plain.hostname = "clone-1";
  auto r = ch->SetIdentity(plain, 2s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->docker_state.empty());
  IdentityRequest full;
  full.hostname = "clone-2";
  full.dns = {"10.0.0.53", "10.0.0.54"};
  full.docker = GuestDockerSettings{{"http://10.214.7.2:5000"}, {"10.214.7.2:5000", "10.214.7.0/30"}};
  r = ch->SetIdentity(full, 10s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->docker_state == "reloaded");
  IdentityRequest clear;  // settings with empty lists are sent: they clear the daemon's lists
  clear.hostname = "clone-3";
  clear.docker = GuestDockerSettings{};
  REQUIRE(ch->SetIdentity(clear, 1500ms).ok());
  auto sent = agent.identity_requests();
  REQUIRE(sent.size() == 3);
  CHECK(!sent[0].contains("dns"));
  CHECK(!sent[0].contains("docker"));
  CHECK(json::serialize(sent[1].at("dns")) == R"(["10.0.0.53","10.0.0.54"])");
  CHECK(json::serialize(sent[1].at("docker")) ==
        R"({"registry_mirrors":["http://10.214.7.2:5000"],"insecure_registries":["10.214.7.2:5000",)"
        R"("10.214.7.0/30"],"timeout_ms":9000})");
  CHECK(json::serialize(sent[2].at("docker")) ==
        R"({"registry_mirrors":[],"insecure_registries":[],"timeout_ms":750})");
}

TEST_CASE("guest channel: deadline, late replies, oversized reply, hang-up and reconnect") {
  FakeAgent agent;
  guest::StreamChannelOptions o;
  o.max_reply_bytes = 1u << 20;
  o.diagnose = [] { return std::string("diagnosed"); };
  auto ch = Channel(agent, o);
  ExecRequest silent;
  silent.argv = {"silent"};
  auto t0 = Clock::now();
  auto r = ch->Exec(silent, 200ms);
  auto took = Clock::now() - t0;
  CHECK(r.status().code() == StatusCode::kDeadlineExceeded);
  CHECK(took >= 190ms);
  CHECK(took < 1500ms);
  REQUIRE(ch->Ping(2s).ok());  // same connection, the silent call's id never answered

  ExecRequest huge;
  huge.argv = {"huge"};
  ExecRequest hang;
  hang.argv = {"hangup"};
  auto g = ch->Exec(hang, 2s);
  CHECK(g.status().code() == StatusCode::kUnavailable);
  CHECK(g.status().message().find("diagnosed") != std::string::npos);
  REQUIRE(ch->Ping(2s).ok());  // reconnected
  CHECK(agent.connections() == 2);

  // A reply over the cap is a protocol violation: the channel is not trusted again (tests/vm/hostile_channel_test.cpp).
  auto h = ch->Exec(huge, 5s);
  CHECK(h.status().code() == StatusCode::kDataLoss);
  CHECK(h.status().message().find("protocol violation: reply line longer than 1048576 bytes") != std::string::npos);
  CHECK(ch->Ping(2s).status().code() == StatusCode::kDataLoss);
  CHECK(agent.connections() == 2);
}

TEST_CASE("guest channel: nothing listening is Unavailable within the deadline") {
  auto ch = guest::MakeStreamGuestChannel([](std::chrono::milliseconds t) {
    return guest::ConnectUnixStream("/tmp/fcw-no-such-socket.sock", t);
  });
  auto t0 = Clock::now();
  auto r = ch->Ping(150ms);
  CHECK(r.status().code() == StatusCode::kUnavailable);
  CHECK(Clock::now() - t0 < 1s);
}

TEST_CASE("guest channel: docker request fields on the wire and the decoded reply") {
  FakeAgent agent;
  auto ch = Channel(agent);
  DockerRequest req;
  req.method = "POST";
  req.path = "/echo";
  req.body = std::string("{\"Image\":\"busybox\"}\x00\xff", 21);
  req.socket = "/run/other/docker.sock";
  req.timeout = 4321ms;
  auto r = ch->Docker(req, 2s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->status == 201);
  CHECK(r->body == req.body);
  CHECK(!r->truncated);
  auto sent = agent.docker_requests();
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].at("v").as_int64() == 1);
  CHECK(sent[0].at("method").as_string() == "POST");
  CHECK(sent[0].at("path").as_string() == "/echo");
  CHECK(sent[0].at("socket").as_string() == "/run/other/docker.sock");
  CHECK(sent[0].at("timeout_ms").as_int64() == 4321);
  CHECK(sent[0].at("body_b64").as_string() == "eyJJbWFnZSI6ImJ1c3lib3gifQD/");

  // Defaults: GET, the default socket and timeout, no body field at all.
  DockerRequest get;
  get.path = "/v1.41/containers/abc/json";
  auto g = ch->Docker(get, 2s);
  REQUIRE_MESSAGE(g.ok(), g.status().ToString());
  CHECK(g->status == 404);  // an HTTP error status is a successful call
  CHECK(g->body == R"({"message":"no"})");
  sent = agent.docker_requests();
  REQUIRE(sent.size() == 2);
  CHECK(sent[1].at("method").as_string() == "GET");
  CHECK(sent[1].at("path").as_string() == "/v1.41/containers/abc/json");
  CHECK(sent[1].at("socket").as_string() == "/var/run/docker.sock");
  CHECK(sent[1].at("timeout_ms").as_int64() == 30000);
  CHECK(!sent[1].contains("body_b64"));
}

TEST_CASE("guest channel: docker reply of 1 MiB fits the default reply cap") {
  FakeAgent agent;
  auto ch = Channel(agent);
  DockerRequest req;
  req.path = "/big";
  auto r = ch->Docker(req, 5s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->status == 200);
  CHECK(r->truncated);
  CHECK(r->body.size() >= (1u << 20));
  CHECK(r->body.size() <= (1u << 20) + 3);
}

TEST_CASE("guest channel: docker agent errors map to statuses") {
  FakeAgent agent;
  auto ch = Channel(agent);
  DockerRequest req;
  req.path = "/timeout";
  auto t = ch->Docker(req, 2s);
  CHECK(t.status().code() == StatusCode::kDeadlineExceeded);
  CHECK(t.status().message().find("no complete response") != std::string::npos);
  req.path = "/down";
  auto d = ch->Docker(req, 2s);
  CHECK(d.status().code() == StatusCode::kUnavailable);
  CHECK(d.status().message().find("/var/run/docker.sock: connect: No such file or directory") !=
        std::string::npos);
  CHECK(agent.docker_requests().size() == 2);
  // A reply without a status breaks the protocol (DataLoss), and the channel refuses every later call.
  req.path = "/nostatus";
  auto n = ch->Docker(req, 2s);
  CHECK(n.status().code() == StatusCode::kDataLoss);
  CHECK(n.status().message().find("no integer status") != std::string::npos);
  CHECK(agent.docker_requests().size() == 3);
  req.path = "/down";
  CHECK(ch->Docker(req, 2s).status().code() == StatusCode::kDataLoss);
  CHECK(agent.docker_requests().size() == 3);
}

TEST_CASE("guest channel: docker arguments are validated on the host, naming the field") {
  FakeAgent agent;
  auto ch = Channel(agent);
  struct Case {
    DockerRequest req;
    std::string field;
  };
  auto with = [](auto change) {
    DockerRequest r;
    r.path = "/_ping";
    change(r);
    return r;
  };
  std::vector<Case> cases = {
      {with([](DockerRequest& r) { r.method = "PATCH"; }), "method"},
      {with([](DockerRequest& r) { r.method = "get"; }), "method"},
      {with([](DockerRequest& r) { r.path = ""; }), "path"},
      {with([](DockerRequest& r) { r.path = "containers/json"; }), "path"},
      {with([](DockerRequest& r) { r.path = "/a b"; }), "path"},
      {with([](DockerRequest& r) { r.path = "/a\r\nX-Evil: 1"; }), "path"},
      {with([](DockerRequest& r) { r.path = "/a#b"; }), "path"},
      {with([](DockerRequest& r) { r.path = "/" + std::string(2048, 'a'); }), "path"},
      {with([](DockerRequest& r) { r.socket = "docker.sock"; }), "socket"},
      {with([](DockerRequest& r) { r.socket = "/" + std::string(107, 's'); }), "socket"},
      {with([](DockerRequest& r) { r.timeout = 0ms; }), "timeout"},
      {with([](DockerRequest& r) { r.timeout = 600001ms; }), "timeout"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.req.path);
    auto r = ch->Docker(c.req, 2s);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("docker: " + c.field) == 0);
  }
  // A body that makes the request line exceed the protocol's 64 KiB is refused before sending.
  auto big = with([](DockerRequest& r) {
    r.method = "POST";
    r.body = std::string(60000, 'x');
  });
  CHECK(ch->Docker(big, 2s).status().code() == StatusCode::kInvalidArgument);
  // Exactly the longest path is fine.
  auto longest = with([](DockerRequest& r) { r.path = "/" + std::string(2047, 'a'); });
  CHECK(ch->Docker(longest, 2s).ok());
  CHECK(agent.docker_requests().size() == 1);
}

TEST_CASE("guest channel: docker stream falls back to one exchange with an agent without docker_start") {
  FakeAgent agent;  // answers unknown_op to docker_start, as an agent older than the streaming ops
  auto ch = Channel(agent);
  DockerRequest req;
  req.method = "POST";
  req.path = "/echo";
  req.body = "{\"x\":1}";
  std::vector<std::string> pieces;
  auto r = ch->DockerStream(req, [&](std::string_view p) { pieces.emplace_back(p); }, 5s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->status == 201);
  CHECK(r->body.empty());
  REQUIRE(pieces.size() == 1);
  CHECK(pieces[0] == "{\"x\":1}");
  CHECK(agent.docker_requests().size() == 1);
  // Host-side validation first, as for Docker().
  req.path = "no-slash";
  CHECK(ch->DockerStream(req, [](std::string_view) {}, 5s).status().code() == StatusCode::kInvalidArgument);
}

namespace {

// A connector of one connection that carries `replies` and then EOF (the agent's end stays open, so the host's
// requests are written and never read), as the fuzz target fcwarm_fuzz_guest_channel drives the channel.
struct ScriptedAgent {
  explicit ScriptedAgent(const std::string& replies) {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(::send(sv[1], replies.data(), replies.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(replies.size()));
    ::shutdown(sv[1], SHUT_WR);
    host_fd = sv[0];
    agent_fd = sv[1];
  }
  ~ScriptedAgent() {
    if (host_fd >= 0) ::close(host_fd);
    ::close(agent_fd);
  }
  std::unique_ptr<GuestChannel> Channel() {
    return guest::MakeStreamGuestChannel([this](std::chrono::milliseconds) -> Result<int> {
      if (host_fd < 0) return Status::Unavailable("no more connections");
      int fd = host_fd;
      host_fd = -1;
      return fd;
    });
  }
  int host_fd = -1;
  int agent_fd = -1;
};

}  // namespace

// Spotted while writing fcwarm_fuzz_guest_channel, reproduced with it under UBSan (seeds
// tests/fuzz/corpus-guest_channel/regression-*): numbers out of int64's range in a reply were converted with
// undefined behaviour (1e300 to int64; offset + body size overflowing). They are now "not a usable integer" (0)
// and an invalid docker_read offset fails the stream.
TEST_CASE("guest channel: numbers out of range from a hostile agent are refused, not undefined behaviour") {
  SUBCASE("a double outside int64 reads as 0") {
    ScriptedAgent agent(R"({"v":1,"id":1,"ok":true,"result":{"uptime_ms":1e300,"protocol":-1e19,"hostname":"h"}})"
                        "\n");
    auto r = agent.Channel()->Ping(2s);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    CHECK(r->uptime_ms == 0);
    CHECK(r->protocol == 0);
    CHECK(r->hostname == "h");
  }
  SUBCASE("a docker_read offset near INT64_MAX fails the stream") {
    ScriptedAgent agent(
        R"({"v":1,"id":1,"ok":true,"result":{"job":1}})"
        "\n"
        R"({"v":1,"id":2,"ok":true,"result":{"status":200,"offset":9223372036854775807,"body_b64":"aGkK","done":false}})"
        "\n");
    DockerRequest req;
    req.method = "POST";
    req.path = "/images/create?fromImage=busybox";
    std::string body;
    auto r = agent.Channel()->DockerStream(req, [&](std::string_view p) { body += p; }, 2s);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kDataLoss);  // a protocol violation: the VM is not trusted any more
    CHECK(r.status().message().find("invalid offset") != std::string::npos);
    CHECK(body.empty());
  }
  SUBCASE("a negative docker_read offset fails the stream") {
    ScriptedAgent agent(
        R"({"v":1,"id":1,"ok":true,"result":{"job":1}})"
        "\n"
        R"({"v":1,"id":2,"ok":true,"result":{"status":200,"offset":-5,"body_b64":"","done":true}})"
        "\n");
    DockerRequest req;
    req.path = "/images/create?fromImage=busybox";
    auto r = agent.Channel()->DockerStream(req, [](std::string_view) {}, 2s);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("invalid offset") != std::string::npos);
  }
}
