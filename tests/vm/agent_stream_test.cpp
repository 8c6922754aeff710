// The streaming Docker path end to end without a VM: the real fcwarm-agent binary (--stdio, the line loop
// the virtio-serial port uses) on one end of a socketpair, the host's guest channel on the other, and a
// Docker daemon double on a Unix socket that sends its answer in stages. Label `unit`.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "docker/docker_client.hpp"
#include "guest/stream_channel.hpp"

namespace fs = std::filesystem;
using namespace fcwarm;
using namespace std::chrono_literals;

namespace {

// fcwarm-agent --stdio on a socketpair; Channel() connects the host's guest channel to it.
class AgentProcess {
 public:
  AgentProcess() {
    int sp[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(sp[1], 0);
      ::dup2(sp[1], 1);
      const char* argv[] = {FCWARM_AGENT_BIN, "--stdio", nullptr};
      ::execv(argv[0], const_cast<char* const*>(argv));
      ::_exit(127);
    }
    ::close(sp[1]);
    fd_ = sp[0];
  }
  ~AgentProcess() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    if (fd_ >= 0) ::close(fd_);
  }
  // The channel owns a dup of our end (one persistent connection, as over virtio-serial).
  std::unique_ptr<GuestChannel> Channel() {
    int fd = fd_;
    return guest::MakeStreamGuestChannel([fd](std::chrono::milliseconds) -> Result<int> {
      int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (d < 0) return Status::Unavailable("dup failed");
      return d;
    });
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
};

// A Docker daemon double for one connection: sends pieces[i] once Allow(i + 1) was called, then closes.
class StagedDaemon {
 public:
  explicit StagedDaemon(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {
    path_ = (fs::temp_directory_path() / ("fcw-stream-" + std::to_string(::getpid()) + ".sock")).string();
    ::unlink(path_.c_str());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof(a.sun_path) - 1);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(fd_, 4) == 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~StagedDaemon() {
    Allow(pieces_.size());
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  void Allow(size_t n) {
    std::lock_guard<std::mutex> l(mu_);
    allowed_ = std::max(allowed_, n);
    cv_.notify_all();
  }
  std::string request() {
    std::lock_guard<std::mutex> l(mu_);
    return request_;
  }

 private:
  void Serve() {
    int c = ::accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::read(c, buf, sizeof buf);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      request_ = req;
    }
    for (size_t i = 0; i < pieces_.size(); ++i) {
      std::unique_lock<std::mutex> l(mu_);
      // At most 20 s per stage: a reader that does not stream gets everything late, not never.
      cv_.wait_for(l, 20s, [&] { return allowed_ > i; });
      l.unlock();
      if (::send(c, pieces_[i].data(), pieces_[i].size(), MSG_NOSIGNAL) < 0) break;
    }
    ::close(c);
  }
  std::vector<std::string> pieces_;
  std::string path_;
  int fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t allowed_ = 0;
  std::string request_;
};

}  // namespace

TEST_CASE("agent stream: the body reaches the host while the daemon still sends it") {
  AgentProcess agent;
  auto ch = agent.Channel();
  StagedDaemon daemon({"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\nfirst\n", "second\n"});
  daemon.Allow(1);
  DockerRequest req;
  req.method = "POST";
  req.path = "/v1.41/images/create?fromImage=busybox&tag=latest";
  req.socket = daemon.path();
  req.timeout = 30s;
  std::vector<std::string> pieces;
  std::atomic<bool> ping_ok{false};
  auto started = std::chrono::steady_clock::now();
  auto r = ch->DockerStream(
      req,
      [&](std::string_view piece) {
        pieces.emplace_back(piece);
        if (pieces.size() == 1) {
          // Mid-stream the channel still serves other calls, then the daemon may finish.
          ping_ok = ch->Ping(5s).ok();
          daemon.Allow(2);
        }
      },
      40s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->status == 200);
  CHECK(r->body.empty());
  CHECK(!r->truncated);
  REQUIRE(pieces.size() >= 2);
  CHECK(pieces[0] == "first\n");
  std::string all;
  for (const auto& p : pieces) all += p;
  CHECK(all == "first\nsecond\n");
  CHECK(ping_ok);
  // Streaming, the daemon never waited out its 20 s stage limit.
  CHECK(std::chrono::steady_clock::now() - started < 15s);
  CHECK(daemon.request().rfind("POST /v1.41/images/create?fromImage=busybox&tag=latest HTTP/1.0\r\n", 0) == 0);
}

TEST_CASE("agent stream: a pull reports its progress while it runs") {
  AgentProcess agent;
  auto ch = agent.Channel();
  const std::string head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n";
  const std::string start =
      R"({"status":"Pulling from library/nginx","id":"alpine"})" "\n"
      R"({"status":"Pulling fs layer","progressDetail":{},"id":"l1"})" "\n"
      R"({"status":"Pulling fs layer","progressDetail":{},"id":"l2"})" "\n"
      R"({"status":"Downloading","progressDetail":{"current":100,"total":1000},"id":"l1"})" "\n"
      R"({"status":"Downloading","progressDetail":{"current":50,"total":200},"id":"l2"})" "\n";
  const std::string rest =
      R"({"status":"Download complete","progressDetail":{},"id":"l2"})" "\n"
      R"({"status":"Extracting","progressDetail":{"current":200,"total":200},"id":"l2"})" "\n"
      R"({"status":"Pull complete","progressDetail":{},"id":"l2"})" "\n"
      R"({"status":"Downloading","progressDetail":{"current":1000,"total":1000},"id":"l1"})" "\n"
      R"({"status":"Pull complete","progressDetail":{},"id":"l1"})" "\n"
      R"({"status":"Digest: sha256:0123"})" "\n"
      R"({"status":"Status: Downloaded newer image for nginx:alpine"})" "\n";
  StagedDaemon daemon({head + start, rest});
  daemon.Allow(1);
  std::vector<docker::PullProgress> seen;
  docker::Client client(std::make_unique<docker::GuestTransport>(*ch), {"v1.41", 30s, daemon.path()});
  auto r = client.Pull("nginx:alpine", [&](const docker::PullProgress& p) {
    seen.push_back(p);
    if (p.bytes == 150) daemon.Allow(2);  // seen mid-pull: now the daemon may finish
  });
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->complete);
  CHECK(r->layers == 2);
  CHECK(r->bytes == 1200);
  REQUIRE(!seen.empty());
  // The progress while the pull was still running: two layers announced, 150 of 1200 bytes, none done.
  docker::PullProgress mid{0, 2, 150, 1200};
  CHECK(std::find(seen.begin(), seen.end(), mid) != seen.end());
  CHECK(seen.back() == docker::PullProgress{2, 2, 1200, 1200});
  CHECK(daemon.request().rfind("POST /v1.41/images/create?fromImage=nginx&tag=alpine HTTP/1.0\r\n", 0) == 0);
}

TEST_CASE("agent stream: the daemon's error and the host deadline") {
  AgentProcess agent;
  auto ch = agent.Channel();
  SUBCASE("an error inside the stream is Docker's message") {
    StagedDaemon daemon({"HTTP/1.0 200 OK\r\n\r\n" R"({"status":"Pulling from library/nope"})" "\n"
                         R"({"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"})" "\n"});
    daemon.Allow(1);
    docker::Client client(std::make_unique<docker::GuestTransport>(*ch), {"v1.41", 30s, daemon.path()});
    auto r = client.Pull("nope:1");
    CHECK(r.status().code() == StatusCode::kUnavailable);
    CHECK(r.status().message() == "docker pull: manifest unknown");
  }
  SUBCASE("a 404 status keeps the daemon's message") {
    StagedDaemon daemon({"HTTP/1.0 404 Not Found\r\n\r\n" R"({"message":"pull access denied for nope"})"});
    daemon.Allow(1);
    docker::Client client(std::make_unique<docker::GuestTransport>(*ch), {"v1.41", 30s, daemon.path()});
    auto r = client.Pull("nope:1");
    CHECK(r.status().code() == StatusCode::kNotFound);
    CHECK(r.status().message().find("pull access denied for nope") != std::string::npos);
  }
  SUBCASE("a daemon that never finishes: DeadlineExceeded from the agent, the channel stays usable") {
    StagedDaemon daemon({"HTTP/1.0 200 OK\r\n\r\n" R"({"status":"Pulling from x"})" "\n", "never\n"});
    daemon.Allow(1);
    DockerRequest req;
    req.method = "POST";
    req.path = "/v1.41/images/create?fromImage=x&tag=1";
    req.socket = daemon.path();
    req.timeout = 1500ms;
    std::string got;
    auto r = ch->DockerStream(req, [&](std::string_view p) { got += p; }, 10s);
    CHECK(r.status().code() == StatusCode::kDeadlineExceeded);
    CHECK(r.status().message().find("no complete response within 1500 ms") != std::string::npos);
    CHECK(got == "{\"status\":\"Pulling from x\"}\n");
    CHECK(ch->Ping(5s).ok());
  }
}
