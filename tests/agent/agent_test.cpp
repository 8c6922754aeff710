// Host tests of the guest agent's protocol handler (guest/agent/agent_core.hpp). Nothing here changes the
// host: every side-effecting call goes to RecordingOps, which only records it. Processes (exec, command
// checks) and Unix-socket reads run for real because they are harmless.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent_core.hpp"

namespace fa = fcwarm::agent;
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

// Records every state-changing call; answers reads with fixed values; runs processes and Unix-socket HTTP
// exchanges for real (recording the latter too).
class RecordingOps final : public fa::SystemOps {
 public:
  std::string BootId() override { return "11111111-2222-3333-4444-555555555555"; }
  std::chrono::milliseconds Uptime() override { return std::chrono::milliseconds(4242); }
  std::string Hostname() override {
    std::lock_guard l(mu);
    return hostname;
  }
  bool PathExists(const std::string& path) override { return real.PathExists(path); }
  fa::OpStatus SetHostname(const std::string& name) override {
    std::lock_guard l(mu);
    calls.push_back("hostname " + name);
    hostname = name;
    return {};
  }
  fa::OpStatus WriteFile(const std::string& path, const std::string& content) override {
    std::lock_guard l(mu);
    calls.push_back("write " + path);
    written[path] = content;
    return {};
  }
  fa::OpStatus SetMac(const std::string& iface, const std::vector<uint8_t>& m) override {
    std::lock_guard l(mu);
    calls.push_back("mac " + iface);
    mac = m;
    return fail_mac ? fa::OpStatus::Fail("no such device") : fa::OpStatus{};
  }
  fa::OpStatus SetIpv4(const std::string& iface, uint32_t addr, int prefix) override {
    std::lock_guard l(mu);
    calls.push_back("ip " + iface + " " + std::to_string(prefix));
    ipv4 = addr;
    return {};
  }
  fa::OpStatus SetDefaultRoute(const std::string& iface, uint32_t gw) override {
    std::lock_guard l(mu);
    calls.push_back("route " + iface);
    gateway = gw;
    return {};
  }
  fa::OpStatus AddEntropy(const std::string& bytes) override {
    std::lock_guard l(mu);
    calls.push_back("entropy");
    entropy = bytes;
    return {};
  }
  fa::OpStatus SetWallClock(int64_t ns) override {
    std::lock_guard l(mu);
    calls.push_back("clock");
    clock_ns = ns;
    return {};
  }
  void Sync() override {
    std::lock_guard l(mu);
    calls.push_back("sync");
  }
  fa::OpStatus FlushNeighbours() override {
    std::lock_guard l(mu);
    calls.push_back("neigh");
    return {};
  }
  std::vector<std::string> ListFiles(const std::string& dir) override { return real.ListFiles(dir); }
  fa::OpStatus RemoveFile(const std::string& path) override {
    // Only ever inside the test's temporary root.
    REQUIRE(path.rfind(root_guard, 0) == 0);
    return real.RemoveFile(path);
  }
  fa::FileContent ReadFile(const std::string& path, std::size_t max_bytes) override {
    return real.ReadFile(path, max_bytes);
  }
  fa::OpStatus ReplaceFile(const std::string& path, const std::string& content, unsigned mode) override {
    // Only ever inside the test's temporary root.
    REQUIRE(path.rfind(root_guard, 0) == 0);
    {
      std::lock_guard l(mu);
      calls.push_back("replace " + path);
    }
    return real.ReplaceFile(path, content, mode);
  }
  std::vector<fa::ProcessEntry> FindProcesses(const std::string& comm) override {
    std::lock_guard l(mu);
    auto it = processes.find(comm);
    return it == processes.end() ? std::vector<fa::ProcessEntry>{} : it->second;
  }
  fa::OpStatus SendSignal(int pid, int sig) override {
    std::function<void()> hook;
    {
      std::lock_guard l(mu);
      calls.push_back("signal " + std::to_string(pid) + " " + std::to_string(sig));
      hook = on_signal;
    }
    if (hook) hook();
    return {};
  }
  fa::ProcessResult Run(const fa::ProcessSpec& spec) override { return fa::RunProcess(spec); }
  fa::HttpExchange UnixHttp(const std::string& sock, const std::string& request, std::chrono::milliseconds t,
                            std::size_t max_body) override {
    {
      std::lock_guard l(mu);
      http_calls.push_back(HttpCall{sock, request, t, max_body});
    }
    return real.UnixHttp(sock, request, t, max_body);
  }
  fa::HttpExchange UnixHttpStream(const std::string& sock, const std::string& request, std::chrono::milliseconds t,
                                  const std::function<void(const fa::HttpResponse&)>& on_head,
                                  const std::function<bool(std::string_view)>& on_body) override {
    if (!stream_for_real) return fa::SystemOps::UnixHttpStream(sock, request, t, on_head, on_body);
    {
      std::lock_guard l(mu);
      http_calls.push_back(HttpCall{sock, request, t, 0});
    }
    return real.UnixHttpStream(sock, request, t, on_head, on_body);
  }
  bool stream_for_real = true;  // false: SystemOps' default (one UnixHttp, the body at once)

  struct HttpCall {
    std::string socket, request;
    std::chrono::milliseconds timeout;
    std::size_t max_body;
  };
  std::mutex mu;
  std::vector<std::string> calls;
  std::vector<HttpCall> http_calls;
  std::map<std::string, std::string> written;
  std::string hostname = "host-under-test";
  std::vector<uint8_t> mac;
  uint32_t ipv4 = 0, gateway = 0;
  std::string entropy;
  int64_t clock_ns = -1;
  bool fail_mac = false;
  std::string root_guard = "/nonexistent-root";
  std::map<std::string, std::vector<fa::ProcessEntry>> processes;  // FindProcesses answers, by comm
  std::function<void()> on_signal;                                 // what a signal does (a fake reload)

 private:
  fa::LinuxSystemOps real;  // used only for reads, processes and socket reads
};

// A temporary directory, removed at the end.
struct TempDir {
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fcwarm-agent-test.XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string path;
};

struct Fixture {
  RecordingOps ops;
  fa::AgentContext ctx{&ops, ""};
  json::object Call(std::string_view line) {
    std::string reply = fa::HandleRequestLine(line, ctx);
    CHECK(reply.find('\n') == std::string::npos);
    std::error_code ec;
    json::value v = json::parse(reply, ec);
    REQUIRE_MESSAGE(!ec, reply);
    REQUIRE(v.is_object());
    CHECK(v.at("v").as_int64() == 1);
    return v.as_object();
  }
  json::object Ok(std::string_view line) {
    auto r = Call(line);
    REQUIRE_MESSAGE(r.at("ok").as_bool(), json::serialize(r));
    return r.at("result").as_object();
  }
  // Returns {code, message}.
  std::pair<std::string, std::string> Err(std::string_view line) {
    auto r = Call(line);
    REQUIRE_MESSAGE(!r.at("ok").as_bool(), json::serialize(r));
    const auto& e = r.at("error").as_object();
    return {std::string(e.at("code").as_string()), std::string(e.at("message").as_string())};
  }
};

std::string Decode(const json::value& v) {
  auto d = fa::Base64Decode(v.as_string());
  REQUIRE(d.has_value());
  return *d;
}

// An HTTP server on a Unix socket for one connection: reads the request (head, then Content-Length body
// bytes), records it, then behaves as `mode` says. Sends with MSG_NOSIGNAL: the client may hang up early.
class FakeHttpServer {
 public:
  enum class Mode {
    kRespondAndClose,     // writes `response`, closes (what an HTTP/1.0 server does)
    kRespondAndKeepOpen,  // writes `response`, keeps the connection until the client closes it
    kSilent,              // never answers; waits until the client closes
  };
  FakeHttpServer(const std::string& path, std::string response, Mode mode = Mode::kRespondAndClose)
      : response_(std::move(response)), mode_(mode) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof a.sun_path);
    memcpy(a.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(fd_, 4) == 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeHttpServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  // The request bytes received (head and body).
  std::string request() {
    std::lock_guard l(mu_);
    return request_;
  }
  int connections() {
    std::lock_guard l(mu_);
    return connections_;
  }

 private:
  void Serve() {
    int c = accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    std::string req;
    char buf[4096];
    std::size_t want = std::string::npos;  // total request size once the head is known
    while (req.size() < want) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
      auto end = req.find("\r\n\r\n");
      if (want == std::string::npos && end != std::string::npos) {
        std::size_t body = 0;
        auto cl = req.find("\r\nContent-Length: ");
        if (cl != std::string::npos && cl < end) body = std::stoul(req.substr(cl + 18));
        want = end + 4 + body;
      }
    }
    {
      std::lock_guard l(mu_);
      request_ = req;
      ++connections_;
    }
    if (mode_ != Mode::kSilent) {
      std::size_t off = 0;
      while (off < response_.size()) {
        ssize_t w = send(c, response_.data() + off, response_.size() - off, MSG_NOSIGNAL);
        if (w <= 0) break;  // the client stopped reading (e.g. after 1 MiB)
        off += static_cast<size_t>(w);
      }
    }
    if (mode_ != Mode::kRespondAndClose) {
      while (read(c, buf, sizeof buf) > 0) {
      }
    }
    close(c);
  }

  std::string response_;
  Mode mode_;
  int fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::string request_;
  int connections_ = 0;
};

// A dockerd double on a Unix socket, for `identity`'s docker step: serves any number of HTTP/1.0 exchanges
// (GET /_ping, GET /info), reporting in /info's RegistryConfig what it last loaded from its daemon.json, as
// dockerd does: at start and on Reload() (what SIGHUP does), where only keys present in the file change.
class FakeDockerd {
 public:
  FakeDockerd(const std::string& sock, std::string config_file) : config_file_(std::move(config_file)) {
    Load();
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(sock.size() < sizeof a.sun_path);
    memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(fd_, 16) == 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeDockerd() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  // What SIGHUP does.
  void Reload() {
    Load();
    std::lock_guard l(mu_);
    ++reloads_;
  }
  int reloads() {
    std::lock_guard l(mu_);
    return reloads_;
  }
  std::vector<std::string> requests() {
    std::lock_guard l(mu_);
    return requests_;
  }

 private:
  // Reads daemon.json like dockerd (at start and on reload): keys present replace the running values.
  void Load() {
    std::ifstream in(config_file_);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.empty()) return;
    auto cfg = json::parse(text).as_object();
    std::lock_guard l(mu_);
    auto strings = [](const json::value& v) {
      std::vector<std::string> out;
      for (const auto& e : v.as_array()) out.emplace_back(e.as_string());
      return out;
    };
    if (cfg.contains("registry-mirrors")) {
      mirrors_.clear();
      for (auto m : strings(cfg.at("registry-mirrors"))) {
        if (!m.empty() && m.back() == '/') m.pop_back();
        mirrors_.push_back(m + "/");
      }
    }
    if (cfg.contains("insecure-registries")) insecure_ = strings(cfg.at("insecure-registries"));
  }
  std::string Info() {
    std::lock_guard l(mu_);
    json::array cidrs{"127.0.0.0/8"};
    json::object index{
        {"docker.io", json::object{{"Name", "docker.io"}, {"Secure", true}, {"Official", true}}}};
    for (const auto& r : insecure_) {
      if (r.find('/') != std::string::npos)
        cidrs.emplace_back(r);
      else
        index[r] = json::object{{"Name", r}, {"Secure", false}, {"Official", false}};
    }
    json::array mirrors;
    for (const auto& m : mirrors_) mirrors.emplace_back(m);
    json::object rc{{"InsecureRegistryCIDRs", cidrs}, {"IndexConfigs", index}, {"Mirrors", mirrors}};
    return json::serialize(json::object{{"ID", "fake"}, {"RegistryConfig", rc}});
  }
  void Serve() {
    for (;;) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
      }
      std::string line = req.substr(0, req.find("\r\n"));
      {
        std::lock_guard l(mu_);
        requests_.push_back(line);
      }
      std::string body = line.rfind("GET /_ping ", 0) == 0  ? "OK"
                         : line.rfind("GET /info ", 0) == 0 ? Info()
                                                            : "{\"message\":\"page not found\"}";
      std::string status = body.rfind("{\"message\"", 0) == 0 ? "404 Not Found" : "200 OK";
      std::string resp =
          "HTTP/1.0 " + status + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
      (void)send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      close(c);
    }
  }
  std::string config_file_;
  int fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> mirrors_, insecure_, requests_;
  int reloads_ = 0;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A docker op request line.
std::string DockerReq(const std::string& socket, const std::string& method, const std::string& path,
                      const std::string& extra = "") {
  return R"({"v":1,"id":1,"op":"docker","method":")" + method + R"(","path":")" + path + R"(","socket":")" +
         socket + "\"" + extra + "}";
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "ping answers version, boot id, uptime and hostname") {
  auto r = Call(R"({"v":1,"id":7,"op":"ping"})");
  CHECK(r.at("id").as_int64() == 7);
  CHECK(r.at("ok").as_bool());
  auto res = r.at("result").as_object();
  CHECK(res.at("agent_version").as_string() == "0.1.0");
  CHECK(res.at("protocol").as_int64() == 1);
  CHECK(res.at("boot_id").as_string() == "11111111-2222-3333-4444-555555555555");
  CHECK(res.at("uptime_ms").as_int64() == 4242);
  CHECK(res.at("hostname").as_string() == "host-under-test");
}

TEST_CASE_FIXTURE(Fixture, "unknown fields are ignored and large ids are echoed") {
  auto r = Call(R"({"v":1,"id":18446744073709551615,"op":"ping","extra":{"x":[1,2]}})");
  CHECK(r.at("ok").as_bool());
  CHECK(r.at("id").as_uint64() == 18446744073709551615ull);
}

TEST_CASE_FIXTURE(Fixture, "envelope errors") {
  SUBCASE("malformed JSON") {
    auto r = Call(R"({"v":1,"id":1,"op":"ping")");
    CHECK(r.at("id").is_null());
    CHECK(r.at("error").at("code").as_string() == "bad_request");
  }
  SUBCASE("not an object") { CHECK(Err("[1,2,3]").first == "bad_request"); }
  SUBCASE("empty line") { CHECK(Err("").first == "bad_request"); }
  SUBCASE("id missing") {
    auto r = Call(R"({"v":1,"op":"ping"})");
    CHECK(r.at("id").is_null());
    CHECK(r.at("error").at("message").as_string().find("id") != std::string::npos);
  }
  SUBCASE("id not an integer") {
    auto [code, msg] = Err(R"({"v":1,"id":"7","op":"ping"})");
    CHECK(code == "bad_request");
    CHECK(msg.find("id") != std::string::npos);
  }
  SUBCASE("id is a float") { CHECK(Err(R"({"v":1,"id":1.5,"op":"ping"})").first == "bad_request"); }
  SUBCASE("wrong version") {
    auto r = Call(R"({"v":2,"id":3,"op":"ping"})");
    CHECK(r.at("id").as_int64() == 3);
    CHECK(r.at("error").at("code").as_string() == "unsupported_version");
  }
  SUBCASE("version missing") {
    auto [code, msg] = Err(R"({"id":3,"op":"ping"})");
    CHECK(code == "bad_request");
    CHECK(msg.find("v ") == 0);
  }
  SUBCASE("version is a string") {
    auto [code, msg] = Err(R"({"v":"1","id":3,"op":"ping"})");
    CHECK(code == "bad_request");
    CHECK(msg == "v must be an integer");
  }
  SUBCASE("op missing") { CHECK(Err(R"({"v":1,"id":3})").second == "op is required"); }
  SUBCASE("op not a string") { CHECK(Err(R"({"v":1,"id":3,"op":5})").second == "op must be a string"); }
  SUBCASE("unknown op") {
    auto [code, msg] = Err(R"({"v":1,"id":3,"op":"reboot"})");
    CHECK(code == "unknown_op");
    CHECK(msg.find("reboot") != std::string::npos);
  }
}

TEST_CASE_FIXTURE(Fixture, "hostile input yields an error reply, never a crash") {
  SUBCASE("binary garbage") {
    std::string junk;
    for (int i = 0; i < 4096; ++i) junk.push_back(static_cast<char>((i * 7919 + 13) & 0xff));
    CHECK(Err(junk).first == "bad_request");
  }
  SUBCASE("NUL bytes") { CHECK(Err(std::string("{\"v\":1,\0\"id\":1}", 16)).first == "bad_request"); }
  SUBCASE("invalid UTF-8 in a string") {
    CHECK(Err("{\"v\":1,\"id\":1,\"op\":\"p\xff\xfe\"}").first == "bad_request");
  }
  SUBCASE("deep nesting") {
    std::string deep(10000, '[');
    CHECK(Err(deep).first == "bad_request");
  }
  SUBCASE("oversized line") {
    std::string big = R"({"v":1,"id":1,"op":"ping","pad":")" + std::string(fa::kMaxLineBytes, 'x') + "\"}";
    auto r = Call(big);
    CHECK(r.at("id").is_null());
    CHECK(r.at("error").at("code").as_string() == "too_large");
  }
  SUBCASE("huge numbers") { CHECK(Err(R"({"v":1e999,"id":1,"op":"ping"})").first == "bad_request"); }
}

TEST_CASE("LineAssembler splits lines, strips CR and drops oversized lines") {
  fa::LineAssembler la(16);
  auto ev = la.Feed("abc\r\nde");
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].line == "abc");
  ev = la.Feed("f\n");
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].line == "def");
  ev = la.Feed(std::string(10, 'x'));
  CHECK(ev.empty());
  ev = la.Feed(std::string(10, 'y'));  // 20 > 16: discarded up to the newline
  CHECK(ev.empty());
  ev = la.Feed(std::string(100000, 'z') + "\nok\n");
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].too_large);
  CHECK(!ev[1].too_large);
  CHECK(ev[1].line == "ok");
  la.Feed("partial");
  la.Reset();
  ev = la.Feed("new\n");
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].line == "new");
  // Exactly the limit is accepted.
  ev = la.Feed(std::string(16, 'a') + "\n");
  REQUIRE(ev.size() == 1);
  CHECK(!ev[0].too_large);
}

TEST_CASE("TooLargeReply is a valid error reply") {
  auto v = json::parse(fa::TooLargeReply());
  CHECK(v.at("ok").as_bool() == false);
  CHECK(v.at("id").is_null());
  CHECK(v.at("error").at("code").as_string() == "too_large");
}

TEST_CASE("base64") {
  for (const std::string& s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar",
                                                       std::string("\0\xff\x10", 3)}) {
    auto e = fa::Base64Encode(s);
    auto d = fa::Base64Decode(e);
    REQUIRE(d.has_value());
    CHECK(*d == s);
  }
  CHECK(fa::Base64Encode("foobar") == "Zm9vYmFy");
  CHECK(fa::Base64Encode("fo") == "Zm8=");
  CHECK(!fa::Base64Decode("Zm8").has_value());
  CHECK(!fa::Base64Decode("Zm=8").has_value());
  CHECK(!fa::Base64Decode("Zm8=Zm8=").has_value());
  CHECK(!fa::Base64Decode("Z!8=").has_value());
  CHECK(!fa::Base64Decode("Zm9v\n").has_value());
}

TEST_CASE_FIXTURE(Fixture, "identity applies every field through SystemOps") {
  TempDir root;
  fs::create_directories(root.path + "/etc");
  ctx.root = root.path;
  auto res =
      Ok(R"({"v":1,"id":1,"op":"identity","hostname":"clone-1","iface":"eth1","mac":"02:AB:cd:00:00:01",
                    "ip_cidr":"10.1.2.3/24","gateway":"10.1.2.1","entropy_b64":"AAECAw==",
                    "wall_clock_ns":1700000000123456789})");
  std::vector<std::string> expected = {"hostname clone-1",
                                       "write " + root.path + "/etc/hostname",
                                       "mac eth1",
                                       "ip eth1 24",
                                       "route eth1",
                                       "entropy",
                                       "clock"};
  CHECK(ops.calls == expected);
  CHECK(ops.written[root.path + "/etc/hostname"] == "clone-1\n");
  CHECK(ops.mac == std::vector<uint8_t>{0x02, 0xab, 0xcd, 0x00, 0x00, 0x01});
  CHECK(ops.ipv4 == htonl(0x0a010203));
  CHECK(ops.gateway == htonl(0x0a010201));
  CHECK(ops.entropy == std::string("\x00\x01\x02\x03", 4));
  CHECK(ops.clock_ns == 1700000000123456789);
  CHECK(res.at("hostname").as_string() == "clone-1");
  CHECK(res.at("iface").as_string() == "eth1");
  CHECK(res.at("mac").as_string() == "02:AB:cd:00:00:01");
  CHECK(res.at("ip_cidr").as_string() == "10.1.2.3/24");
  CHECK(res.at("entropy_bytes").as_int64() == 4);
  CHECK(res.at("clock_set").as_bool());
}

TEST_CASE_FIXTURE(Fixture, "identity with only the wall clock touches nothing else") {
  auto res = Ok(R"({"v":1,"id":1,"op":"identity","wall_clock_ns":5})");
  CHECK(ops.calls == std::vector<std::string>{"clock"});
  CHECK(ops.clock_ns == 5);
  CHECK(res.at("iface").as_string() == "eth0");
  CHECK(res.at("mac").is_null());
  CHECK(res.at("ip_cidr").is_null());
  CHECK(res.at("entropy_bytes").as_int64() == 0);
  CHECK(res.at("clock_set").as_bool());
}

TEST_CASE_FIXTURE(Fixture, "identity validates before changing anything") {
  struct Case {
    const char* req;
    const char* field;
  };
  for (auto c : {Case{R"({"v":1,"id":1,"op":"identity","hostname":5})", "hostname"},
                 Case{R"({"v":1,"id":1,"op":"identity","hostname":"a b"})", "hostname"},
                 Case{R"({"v":1,"id":1,"op":"identity","iface":"../x"})", "iface"},
                 Case{R"({"v":1,"id":1,"op":"identity","hostname":"ok","mac":"02:00:00:00:00"})", "mac"},
                 Case{R"({"v":1,"id":1,"op":"identity","mac":"03:00:00:00:00:01"})", "mac"},
                 Case{R"({"v":1,"id":1,"op":"identity","ip_cidr":"10.0.0.1"})", "ip_cidr"},
                 Case{R"({"v":1,"id":1,"op":"identity","ip_cidr":"10.0.0.1/33"})", "ip_cidr"},
                 Case{R"({"v":1,"id":1,"op":"identity","ip_cidr":"10.0.0.300/8"})", "ip_cidr"},
                 Case{R"({"v":1,"id":1,"op":"identity","gateway":"gw"})", "gateway"},
                 Case{R"({"v":1,"id":1,"op":"identity","entropy_b64":"***"})", "entropy_b64"},
                 Case{R"({"v":1,"id":1,"op":"identity","wall_clock_ns":"now"})", "wall_clock_ns"},
                 Case{R"({"v":1,"id":1,"op":"identity","wall_clock_ns":1.5})", "wall_clock_ns"},
                 Case{R"({"v":1,"id":1,"op":"identity","wall_clock_ns":-1})", "wall_clock_ns"}}) {
    CAPTURE(c.req);
    auto [code, msg] = Err(c.req);
    CHECK(code == "bad_request");
    CHECK(msg.find(c.field) != std::string::npos);
  }
  CHECK(ops.calls.empty());
}

TEST_CASE_FIXTURE(Fixture, "identity reports which step failed") {
  ops.fail_mac = true;
  auto [code, msg] = Err(R"({"v":1,"id":1,"op":"identity","mac":"02:00:00:00:00:01","wall_clock_ns":1})");
  CHECK(code == "failed");
  CHECK(msg.find("mac") == 0);
  CHECK(msg.find("no such device") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "runtime_ready checks") {
  TempDir dir;
  SUBCASE("none") {
    CHECK(Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"none"}})").at("ready").as_bool());
  }
  SUBCASE("file present and absent") {
    std::ofstream(dir.path + "/ready") << "x";
    std::string present =
        R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"file","path":")" + dir.path + R"(/ready"}})";
    std::string absent =
        R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"file","path":")" + dir.path + R"(/nope"}})";
    CHECK(Ok(present).at("ready").as_bool());
    auto r = Ok(absent);
    CHECK(!r.at("ready").as_bool());
    CHECK(r.at("detail").as_string().find("does not exist") != std::string::npos);
  }
  SUBCASE("command") {
    CHECK(Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":["true"]}})")
              .at("ready")
              .as_bool());
    auto r = Ok(
        R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":["sh","-c","echo nope >&2; exit 3"]}})");
    CHECK(!r.at("ready").as_bool());
    CHECK(r.at("detail").as_string().find("3") != std::string::npos);
    r = Ok(
        R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":["sleep","5"],"timeout_ms":100}})");
    CHECK(!r.at("ready").as_bool());
    CHECK(r.at("detail").as_string().find("did not exit") != std::string::npos);
    r = Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":["/no/such/binary"]}})");
    CHECK(!r.at("ready").as_bool());
  }
  SUBCASE("docker _ping answered OK") {
    std::string sock = dir.path + "/docker.sock";
    FakeHttpServer d(sock, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK");
    auto r =
        Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"docker","socket":")" + sock + R"("}})");
    CHECK(r.at("ready").as_bool());
    CHECK(d.request() == "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n");
    REQUIRE(ops.http_calls.size() == 1);
    CHECK(ops.http_calls[0].timeout == std::chrono::milliseconds(5000));
  }
  SUBCASE("docker _ping answered 500") {
    std::string sock = dir.path + "/docker.sock";
    FakeHttpServer d(sock, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom");
    auto r =
        Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"docker","socket":")" + sock + R"("}})");
    CHECK(!r.at("ready").as_bool());
    CHECK(r.at("detail").as_string().find("500") != std::string::npos);
  }
  SUBCASE("docker socket missing") {
    auto r = Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"docker","socket":")" + dir.path +
                R"(/none.sock"}})");
    CHECK(!r.at("ready").as_bool());
    CHECK(r.at("detail").as_string().find(dir.path + "/none.sock: connect") == 0);
  }
  SUBCASE("docker _ping through a symlink to the socket") {
    std::string real_sock = dir.path + "/private.sock";
    FakeHttpServer d(real_sock, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK");
    fs::create_symlink(real_sock, dir.path + "/docker.sock");
    auto r = Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"docker","socket":")" + dir.path +
                R"(/docker.sock"}})");
    CHECK(r.at("ready").as_bool());
    CHECK(d.connections() == 1);
  }
  SUBCASE("docker _ping that never answers") {
    std::string sock = dir.path + "/docker.sock";
    FakeHttpServer d(sock, "", FakeHttpServer::Mode::kSilent);
    auto r = Ok(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"docker","socket":")" + sock +
                R"(","timeout_ms":100}})");
    CHECK(!r.at("ready").as_bool());
    CHECK(r.at("detail").as_string().find("no complete response within 100 ms") != std::string::npos);
  }
  SUBCASE("malformed checks") {
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready"})").second == "check is required");
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":"none"})").second == "check must be an object");
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{}})").second == "check.kind is required");
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"magic"}})").second.find("check.kind") ==
          0);
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"file"}})").second ==
          "check.path is required");
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"file","path":"rel"}})")
              .second.find("check.path") == 0);
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":"true"}})")
              .second.find("check.argv") == 0);
    CHECK(Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":["a",1]}})")
              .second.find("check.argv[1]") == 0);
    CHECK(
        Err(R"({"v":1,"id":1,"op":"runtime_ready","check":{"kind":"command","argv":["true"],"timeout_ms":"x"}})")
            .second.find("check.timeout_ms") == 0);
  }
}

TEST_CASE_FIXTURE(Fixture, "quiesce syncs, drops leases and seeds, flushes neighbours") {
  TempDir root;
  ctx.root = root.path;
  ops.root_guard = root.path;
  fs::create_directories(root.path + "/var/lib/dhcp/keep-dir");
  fs::create_directories(root.path + "/var/lib/systemd");
  fs::create_directories(root.path + "/var/lib/urandom");
  for (auto f : {"/var/lib/dhcp/dhclient.eth0.leases", "/var/lib/dhcp/other.lease",
                 "/var/lib/systemd/random-seed", "/var/lib/urandom/random-seed"})
    std::ofstream(root.path + f) << "x";
  auto r = Ok(R"({"v":1,"id":1,"op":"quiesce"})");
  CHECK(r.at("synced").as_bool());
  CHECK(!fs::exists(root.path + "/var/lib/dhcp/dhclient.eth0.leases"));
  CHECK(!fs::exists(root.path + "/var/lib/dhcp/other.lease"));
  CHECK(fs::exists(root.path + "/var/lib/dhcp/keep-dir"));
  CHECK(!fs::exists(root.path + "/var/lib/systemd/random-seed"));
  CHECK(!fs::exists(root.path + "/var/lib/urandom/random-seed"));
  CHECK(ops.calls.front() == "sync");
  CHECK(std::find(ops.calls.begin(), ops.calls.end(), "neigh") != ops.calls.end());
  // Nothing to remove is fine too.
  CHECK(Ok(R"({"v":1,"id":2,"op":"quiesce"})").at("synced").as_bool());
}

TEST_CASE_FIXTURE(Fixture, "exec") {
  SUBCASE("stdout, stderr and exit code") {
    auto r = Ok(R"({"v":1,"id":1,"op":"exec","argv":["sh","-c","echo out; echo err >&2; exit 7"]})");
    CHECK(r.at("exit_code").as_int64() == 7);
    CHECK(Decode(r.at("stdout_b64")) == "out\n");
    CHECK(Decode(r.at("stderr_b64")) == "err\n");
    CHECK(!r.at("truncated").as_bool());
  }
  SUBCASE("arguments are not interpreted by a shell") {
    auto r = Ok(R"({"v":1,"id":1,"op":"exec","argv":["echo","$HOME; rm -rf /",">x"]})");
    CHECK(Decode(r.at("stdout_b64")) == "$HOME; rm -rf / >x\n");
  }
  SUBCASE("stdin") {
    auto r = Ok(R"({"v":1,"id":1,"op":"exec","argv":["cat"],"stdin_b64":")" +
                fa::Base64Encode("hello\nworld") + "\"}");
    CHECK(Decode(r.at("stdout_b64")) == "hello\nworld");
  }
  SUBCASE("large stdin") {
    std::string in(300000, 'q');
    auto r = Ok(R"({"v":1,"id":1,"op":"exec","argv":["wc","-c"],"stdin_b64":")" +
                fa::Base64Encode(in.substr(0, 40000)) + "\"}");
    CHECK(Decode(r.at("stdout_b64")).find("40000") != std::string::npos);
  }
  SUBCASE("killed by a signal") {
    auto r = Ok(R"({"v":1,"id":1,"op":"exec","argv":["sh","-c","kill -9 $$"]})");
    CHECK(r.at("exit_code").as_int64() == -9);
  }
  SUBCASE("output capped at 1 MiB") {
    auto r = Ok(R"({"v":1,"id":1,"op":"exec","argv":["head","-c","3000000","/dev/zero"]})");
    CHECK(r.at("exit_code").as_int64() == 0);
    CHECK(Decode(r.at("stdout_b64")).size() == fa::kMaxStreamBytes);
    CHECK(r.at("truncated").as_bool());
  }
  SUBCASE("timeout kills the process group") {
    auto t0 = std::chrono::steady_clock::now();
    auto [code, msg] =
        Err(R"({"v":1,"id":1,"op":"exec","argv":["sh","-c","sleep 30; echo done"],"timeout_ms":200})");
    CHECK(code == "timeout");
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  }
  SUBCASE("missing binary") {
    auto [code, msg] = Err(R"({"v":1,"id":1,"op":"exec","argv":["/definitely/not/here"]})");
    CHECK(code == "failed");
    CHECK(msg.find("No such file") != std::string::npos);
  }
  SUBCASE("bad arguments name the field") {
    CHECK(Err(R"({"v":1,"id":1,"op":"exec"})").second == "argv is required");
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":[]})").second == "argv must not be empty");
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":"ls"})").second.find("argv") == 0);
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":["ls",{}]})").second.find("argv[1]") == 0);
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":["ls"],"timeout_ms":0})").second.find("timeout_ms") == 0);
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":["ls"],"timeout_ms":600001})").second.find("timeout_ms") ==
          0);
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":["ls"],"timeout_ms":"1"})").second.find("timeout_ms") == 0);
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":["cat"],"stdin_b64":"%%%"})").second.find("stdin_b64") ==
          0);
    CHECK(Err(R"({"v":1,"id":1,"op":"exec","argv":["cat"],"stdin_b64":7})").second.find("stdin_b64") == 0);
  }
}

TEST_CASE_FIXTURE(Fixture, "concurrent requests") {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      for (int j = 0; j < 20; ++j) {
        std::string reply = fa::HandleRequestLine(R"({"v":1,"id":1,"op":"exec","argv":["echo","x"]})", ctx);
        if (reply.find("\"ok\":true") != std::string::npos) ++ok;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(ok == 80);
}

TEST_CASE("HTTP helpers: targets, request building, head parsing") {
  CHECK(fa::ValidHttpTarget("/v1.41/containers/json?all=1&filters=%7B%7D"));
  CHECK(fa::ValidHttpTarget("/"));
  CHECK(fa::ValidHttpTarget("/" + std::string(fa::kMaxHttpTargetBytes - 1, 'a')));
  CHECK(!fa::ValidHttpTarget("/" + std::string(fa::kMaxHttpTargetBytes, 'a')));
  CHECK(!fa::ValidHttpTarget(""));
  CHECK(!fa::ValidHttpTarget("containers/json"));
  CHECK(!fa::ValidHttpTarget("/a b"));
  CHECK(!fa::ValidHttpTarget("/a#b"));
  CHECK(!fa::ValidHttpTarget("/a\r\nX-Injected: 1"));
  CHECK(!fa::ValidHttpTarget("/a\tb"));
  CHECK(!fa::ValidHttpTarget("/\xc3\xa9"));
  for (auto m : {"GET", "POST", "PUT", "DELETE", "HEAD"}) CHECK(fa::ValidHttpMethod(m));
  for (auto m : {"get", "PATCH", "OPTIONS", "", "GET "}) CHECK(!fa::ValidHttpMethod(m));

  CHECK(fa::BuildHttpRequest("GET", "/_ping", std::nullopt) == "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n");
  CHECK(fa::BuildHttpRequest("POST", "/x", std::nullopt) ==
        "POST /x HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
  CHECK(fa::BuildHttpRequest("PUT", "/x", std::string("{}")) ==
        "PUT /x HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");

  fa::HttpResponse r;
  CHECK(fa::ParseHttpHead("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\ncontent-length:  7 ", r)
            .empty());
  CHECK(r.status == 201);
  CHECK(r.status_line == "HTTP/1.1 201 Created");
  REQUIRE(r.headers.size() == 2);
  CHECK(r.Header("CONTENT-LENGTH") == std::optional<std::string>("7"));
  CHECK(r.Header("content-type") == std::optional<std::string>("application/json"));
  CHECK(!r.Header("Server").has_value());
  CHECK(fa::ParseHttpHead("HTTP/1.0 204", r).empty());
  CHECK(r.status == 204);
  CHECK(fa::ParseHttpHead("HTTP/1.0 2x4 OK", r).find("status line") != std::string::npos);
  CHECK(fa::ParseHttpHead("SSH-2.0-OpenSSH", r).find("status line") != std::string::npos);
  CHECK(fa::ParseHttpHead("HTTP/1.0 099 Low", r).find("status line") != std::string::npos);
  CHECK(fa::ParseHttpHead("HTTP/1.0 200 OK\r\nno colon here", r).find("header line") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "docker: bad arguments name the field and send nothing") {
  struct Case {
    std::string req;
    std::string prefix;  // the message starts with the field name
  };
  const std::string s = R"(,"socket":"/tmp/x.sock")";
  std::vector<Case> cases = {
      {R"({"v":1,"id":1,"op":"docker","path":"/_ping"})", "method is required"},
      {R"({"v":1,"id":1,"op":"docker","method":5,"path":"/_ping"})", "method must be a string"},
      {R"({"v":1,"id":1,"op":"docker","method":"PATCH","path":"/_ping"})", "method must be one of"},
      {R"({"v":1,"id":1,"op":"docker","method":"get","path":"/_ping"})", "method must be one of"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET"})", "path is required"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":7})", "path must be a string"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"_ping"})", "path must start with"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/a b"})", "path must start with"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/a#frag"})", "path must start with"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/a\r\nHost: evil"})", "path must start with"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/\u00e9"})", "path must start with"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/)" + std::string(fa::kMaxHttpTargetBytes, 'a') +
           "\"}",
       "path must start with"},
      {R"({"v":1,"id":1,"op":"docker","method":"POST","path":"/x","body_b64":"{}"})",
       "body_b64 is not valid"},
      {R"({"v":1,"id":1,"op":"docker","method":"POST","path":"/x","body_b64":5})",
       "body_b64 must be a string"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/x","socket":"docker.sock"})", "socket must be"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/x","socket":"/)" + std::string(107, 's') +
           "\"}",
       "socket must be"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/x","socket":["/a"]})",
       "socket must be a string"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/x","timeout_ms":0})", "timeout_ms must be in"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/x","timeout_ms":600001})",
       "timeout_ms must be in"},
      {R"({"v":1,"id":1,"op":"docker","method":"GET","path":"/x","timeout_ms":"5"})",
       "timeout_ms must be an"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.req);
    auto [code, msg] = Err(c.req);
    CHECK(code == "bad_request");
    CHECK(msg.rfind(c.prefix, 0) == 0);
  }
  CHECK(ops.http_calls.empty());
}

TEST_CASE_FIXTURE(Fixture, "docker: requests and responses over a real Unix socket") {
  TempDir dir;
  const std::string sock = dir.path + "/docker.sock";

  SUBCASE("201 with a JSON body; the request carries the body, Content-Type and Content-Length") {
    const std::string body = R"({"Image":"busybox:latest","Cmd":["true"]})";
    const std::string answer = R"({"Id":"4f1c0ffee","Warnings":[]})";
    FakeHttpServer d(sock,
                     "HTTP/1.0 201 Created\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
                     "Content-Length: " +
                         std::to_string(answer.size()) + "\r\n\r\n" + answer);
    auto r = Ok(DockerReq(sock, "POST", "/v1.41/containers/create?name=web",
                          R"(,"body_b64":")" + fa::Base64Encode(body) + R"(","timeout_ms":4000)"));
    CHECK(r.at("status").as_int64() == 201);
    CHECK(Decode(r.at("body_b64")) == answer);
    CHECK(!r.at("truncated").as_bool());
    CHECK(d.request() ==
          "POST /v1.41/containers/create?name=web HTTP/1.0\r\nHost: docker\r\n"
          "Content-Type: application/json\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\n\r\n" + body);
    REQUIRE(ops.http_calls.size() == 1);
    CHECK(ops.http_calls[0].socket == sock);
    CHECK(ops.http_calls[0].timeout == std::chrono::milliseconds(4000));
    CHECK(ops.http_calls[0].max_body == fa::kMaxStreamBytes);
  }
  SUBCASE("404 body without Content-Length, read until EOF; GET carries no body headers") {
    const std::string answer = R"({"message":"No such container: nope"})"
                               "\n";
    FakeHttpServer d(sock, "HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\n\r\n" + answer);
    auto r = Ok(DockerReq(sock, "GET", "/v1.41/containers/nope/json"));
    CHECK(r.at("status").as_int64() == 404);
    CHECK(Decode(r.at("body_b64")) == answer);
    CHECK(!r.at("truncated").as_bool());
    CHECK(d.request() == "GET /v1.41/containers/nope/json HTTP/1.0\r\nHost: docker\r\n\r\n");
    REQUIRE(ops.http_calls.size() == 1);
    CHECK(ops.http_calls[0].timeout == std::chrono::milliseconds(fa::kDefaultDockerTimeoutMs));
  }
  SUBCASE("POST without a body sends Content-Length: 0; 204 has no body") {
    FakeHttpServer d(sock, "HTTP/1.0 204 No Content\r\nApi-Version: 1.41\r\n\r\n");
    auto r = Ok(DockerReq(sock, "POST", "/v1.41/containers/abc/start"));
    CHECK(r.at("status").as_int64() == 204);
    CHECK(Decode(r.at("body_b64")).empty());
    CHECK(d.request() ==
          "POST /v1.41/containers/abc/start HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
  }
  SUBCASE("body over 1 MiB is cut at 1 MiB (with Content-Length)") {
    std::string big(fa::kMaxStreamBytes + fa::kMaxStreamBytes / 2, 'b');
    for (std::size_t i = 0; i < big.size(); i += 997) big[i] = static_cast<char>('a' + i % 26);
    FakeHttpServer d(sock,
                     "HTTP/1.0 200 OK\r\nContent-Length: " + std::to_string(big.size()) + "\r\n\r\n" + big);
    auto r = Ok(DockerReq(sock, "GET", "/v1.41/containers/abc/logs?stdout=1"));
    CHECK(r.at("status").as_int64() == 200);
    std::string got = Decode(r.at("body_b64"));
    CHECK(got.size() == fa::kMaxStreamBytes);
    CHECK(got == big.substr(0, fa::kMaxStreamBytes));
    CHECK(r.at("truncated").as_bool());
  }
  SUBCASE("body over 1 MiB is cut at 1 MiB (until EOF)") {
    std::string big(fa::kMaxStreamBytes + 1, 'z');
    FakeHttpServer d(sock, "HTTP/1.0 200 OK\r\n\r\n" + big);
    auto r = Ok(DockerReq(sock, "GET", "/v1.41/containers/abc/logs?stdout=1"));
    CHECK(Decode(r.at("body_b64")).size() == fa::kMaxStreamBytes);
    CHECK(r.at("truncated").as_bool());
  }
  SUBCASE("exactly 1 MiB is not truncated") {
    std::string big(fa::kMaxStreamBytes, 'y');
    FakeHttpServer d(sock, "HTTP/1.0 200 OK\r\n\r\n" + big);
    auto r = Ok(DockerReq(sock, "GET", "/x"));
    CHECK(Decode(r.at("body_b64")).size() == fa::kMaxStreamBytes);
    CHECK(!r.at("truncated").as_bool());
  }
  SUBCASE("Content-Length ends the response even if the server keeps the connection open") {
    FakeHttpServer d(sock, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                     FakeHttpServer::Mode::kRespondAndKeepOpen);
    auto t0 = std::chrono::steady_clock::now();
    auto r = Ok(DockerReq(sock, "GET", "/x", R"(,"timeout_ms":5000)"));
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    CHECK(Decode(r.at("body_b64")) == "hello");
  }
  SUBCASE("HEAD: no body whatever Content-Length says") {
    FakeHttpServer d(sock, "HTTP/1.0 200 OK\r\nContent-Length: 1234\r\n\r\n",
                     FakeHttpServer::Mode::kRespondAndKeepOpen);
    auto r = Ok(DockerReq(sock, "HEAD", "/_ping", R"(,"timeout_ms":5000)"));
    CHECK(r.at("status").as_int64() == 200);
    CHECK(Decode(r.at("body_b64")).empty());
    CHECK(d.request() == "HEAD /_ping HTTP/1.0\r\nHost: docker\r\n\r\n");
  }
  SUBCASE("a server that never answers: timeout naming the socket") {
    FakeHttpServer d(sock, "", FakeHttpServer::Mode::kSilent);
    auto t0 = std::chrono::steady_clock::now();
    auto [code, msg] = Err(DockerReq(sock, "GET", "/v1.41/info", R"(,"timeout_ms":200)"));
    auto took = std::chrono::steady_clock::now() - t0;
    CHECK(code == "timeout");
    CHECK(msg.find(sock) != std::string::npos);
    CHECK(msg.find("GET /v1.41/info") != std::string::npos);
    CHECK(msg.find("no complete response within 200 ms") != std::string::npos);
    CHECK(took >= std::chrono::milliseconds(190));
    CHECK(took < std::chrono::seconds(3));
  }
  SUBCASE("missing socket: failed, naming the socket") {
    auto [code, msg] = Err(DockerReq(dir.path + "/absent.sock", "GET", "/_ping"));
    CHECK(code == "failed");
    CHECK(msg.find(dir.path + "/absent.sock: connect: No such file or directory") != std::string::npos);
  }
  SUBCASE("a socket nobody listens on: failed (connection refused)") {
    { FakeHttpServer gone(sock, ""); }  // bound, then closed: the path exists, nobody accepts
    auto [code, msg] = Err(DockerReq(sock, "GET", "/_ping"));
    CHECK(code == "failed");
    CHECK(msg.find(sock + ": connect: Connection refused") != std::string::npos);
  }
  SUBCASE("unparsable responses are failed") {
    struct Bad {
      std::string response, expect;
    };
    for (const auto& b :
         {Bad{"SSH-2.0-OpenSSH_9.2\r\n\r\n", "unparsable response: unparsable status line"},
          Bad{"garbage without an end", "connection closed inside the header"},
          Bad{"", "connection closed without a response"},
          Bad{"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", "ended after 10 of 100"},
          Bad{"HTTP/1.0 200 OK\r\nContent-Length: lots\r\n\r\n", "Content-Length \"lots\""},
          Bad{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
              "Transfer-Encoding chunked"}}) {
      CAPTURE(b.response);
      ::unlink(sock.c_str());
      FakeHttpServer d(sock, b.response);
      auto [code, msg] = Err(DockerReq(sock, "GET", "/x"));
      CHECK(code == "failed");
      CHECK(msg.find(sock) != std::string::npos);
      CHECK(msg.find(b.expect) != std::string::npos);
    }
  }
  SUBCASE("a response head larger than the limit is failed") {
    std::string head =
        "HTTP/1.0 200 OK\r\nX-Pad: " + std::string(fa::kMaxHttpHeadBytes + 10, 'p') + "\r\n\r\n";
    FakeHttpServer d(sock, head);
    auto [code, msg] = Err(DockerReq(sock, "GET", "/x"));
    CHECK(code == "failed");
    CHECK(msg.find("header") != std::string::npos);
  }
}

// ---- identity: dns and docker registry settings ----

namespace {
// A guest root in a temporary directory with /etc, and the double's writes confined to it.
struct GuestRoot {
  explicit GuestRoot(Fixture& f) {
    fs::create_directories(dir.path + "/etc/docker");
    f.ctx.root = dir.path;
    f.ops.root_guard = dir.path;
  }
  std::string path(const std::string& p) const { return dir.path + p; }
  TempDir dir;
};
}  // namespace

TEST_CASE_FIXTURE(Fixture, "identity dns replaces resolv.conf atomically") {
  GuestRoot root(*this);
  // The image's resolv.conf may be a symlink (e.g. to a resolver's stub file): it is replaced, not followed.
  std::ofstream(root.path("/etc/stub-resolv.conf")) << "nameserver 127.0.0.53\n";
  fs::create_symlink("stub-resolv.conf", root.path("/etc/resolv.conf"));
  auto r = Ok(R"({"v":1,"id":1,"op":"identity","dns":["10.0.0.53","192.168.1.1"],"wall_clock_ns":1})");
  CHECK(ops.calls == std::vector<std::string>{"clock", "replace " + root.path("/etc/resolv.conf")});
  CHECK(!fs::is_symlink(root.path("/etc/resolv.conf")));
  CHECK(ReadAll(root.path("/etc/resolv.conf")) ==
        "# written by fcwarm-agent (identity)\nnameserver 10.0.0.53\nnameserver 192.168.1.1\n");
  CHECK(ReadAll(root.path("/etc/stub-resolv.conf")) == "nameserver 127.0.0.53\n");
  CHECK((fs::status(root.path("/etc/resolv.conf")).permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read));
  CHECK(json::serialize(r.at("dns")) == R"(["10.0.0.53","192.168.1.1"])");
  CHECK(r.at("docker").is_null());
  // No temporary file is left next to it.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root.path("/etc"))) entries += e.path().filename() != "docker";
  CHECK(entries == 2);
  // Without dns, resolv.conf is not touched and the result says null.
  CHECK(Ok(R"({"v":1,"id":2,"op":"identity","wall_clock_ns":1})").at("dns").is_null());
}

TEST_CASE_FIXTURE(Fixture, "identity validates dns and docker before changing anything") {
  GuestRoot root(*this);
  struct Case {
    std::string fields;
    std::string field;  // the message starts with it
  };
  const std::string ok = R"("hostname":"clone-1","wall_clock_ns":1,)";
  for (const auto& c : {
           Case{R"("dns":"10.0.0.53")", "dns must be an array"},
           Case{R"("dns":[])", "dns must list 1 to 3"},
           Case{R"("dns":["1.1.1.1","1.0.0.1","8.8.8.8","9.9.9.9"])", "dns has 4 entries"},
           Case{R"("dns":["10.0.0.53",53])", "dns[1] must be a string"},
           Case{R"("dns":["ns.example"])", "dns[0] must be a unicast IPv4"},
           Case{R"("dns":["10.0.0.300"])", "dns[0]"},
           Case{R"("dns":["0.0.0.0"])", "dns[0]"},
           Case{R"("dns":["224.0.0.1"])", "dns[0]"},
           Case{R"("dns":["::1"])", "dns[0]"},
           Case{R"("docker":[])", "docker must be an object"},
           Case{R"("docker":{})", "docker must set registry_mirrors and/or insecure_registries"},
           Case{R"("docker":{"registry_mirrors":"http://m:5000"})",
                "docker.registry_mirrors must be an array"},
           Case{R"("docker":{"registry_mirrors":["ftp://m"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["m:5000"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://ok:5000","http://m/v2/"]})",
                "docker.registry_mirrors[1]"},
           Case{R"("docker":{"registry_mirrors":["http://m/?x=1"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://u:p@m/"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://m:0"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://m:70000"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://-m-/"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://m n/"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://"]})", "docker.registry_mirrors[0]"},
           Case{R"("docker":{"registry_mirrors":["http://)" + std::string(300, 'a') + R"("]})",
                "docker.registry_mirrors[0]"},
           Case{R"("docker":{"insecure_registries":["http://r:5000"]})", "docker.insecure_registries[0]"},
           Case{R"("docker":{"insecure_registries":["10.0.0.0/33"]})", "docker.insecure_registries[0]"},
           Case{R"("docker":{"insecure_registries":["10.0.0/8"]})", "docker.insecure_registries[0]"},
           Case{R"("docker":{"insecure_registries":["r:5000/x"]})", "docker.insecure_registries[0]"},
           Case{R"("docker":{"insecure_registries":[""]})", "docker.insecure_registries[0]"},
           Case{R"("docker":{"insecure_registries":[5]})", "docker.insecure_registries[0] must be a string"},
           Case{R"("docker":{"insecure_registries":["r"],"timeout_ms":0})", "docker.timeout_ms"},
           Case{R"("docker":{"insecure_registries":["r"],"timeout_ms":600001})", "docker.timeout_ms"},
           Case{R"("docker":{"insecure_registries":["r"],"timeout_ms":"5s"})", "docker.timeout_ms"},
       }) {
    std::string req = R"({"v":1,"id":1,"op":"identity",)" + ok + c.fields + "}";
    CAPTURE(req);
    auto [code, msg] = Err(req);
    CHECK(code == "bad_request");
    CHECK(msg.rfind(c.field, 0) == 0);
  }
  std::string many = R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":[)";
  for (int i = 0; i < 17; ++i) many += std::string(i ? "," : "") + "\"http://m" + std::to_string(i) + "/\"";
  CHECK(Err(many + "]}}").second.rfind("docker.registry_mirrors has 17 entries", 0) == 0);
  CHECK(ops.calls.empty());
  CHECK(!fs::exists(root.path("/etc/resolv.conf")));
  CHECK(!fs::exists(root.path("/etc/docker/daemon.json")));
}

TEST_CASE_FIXTURE(Fixture, "identity docker merges daemon.json when dockerd is not running") {
  GuestRoot root(*this);
  std::ofstream(root.path("/etc/docker/daemon.json"))
      << R"({"log-driver": "json-file", "registry-mirrors": ["http://old:5000/"], "debug": true})";
  auto r = Ok(R"({"v":1,"id":1,"op":"identity","docker":{
      "registry_mirrors":["http://10.214.7.2:5000","https://mirror.example/"],
      "insecure_registries":["10.214.7.2:5000","10.214.7.1/30","[fd00::1]:5000"]}})");
  CHECK(ops.calls == std::vector<std::string>{"replace " + root.path("/etc/docker/daemon.json")});
  auto cfg = json::parse(ReadAll(root.path("/etc/docker/daemon.json"))).as_object();
  CHECK(cfg.at("log-driver").as_string() == "json-file");
  CHECK(cfg.at("debug").as_bool());
  // Normalized as dockerd reports them: mirrors end in "/", CIDRs have their host bits cleared.
  CHECK(json::serialize(cfg.at("registry-mirrors")) ==
        R"(["http://10.214.7.2:5000/","https://mirror.example/"])");
  CHECK(json::serialize(cfg.at("insecure-registries")) ==
        R"(["10.214.7.2:5000","10.214.7.0/30","[fd00::1]:5000"])");
  const auto& d = r.at("docker").as_object();
  CHECK(d.at("dockerd").as_string() == "not_running");
  CHECK(d.at("config_file").as_string() == root.path("/etc/docker/daemon.json"));

  SUBCASE("only the given key changes, an empty list clears it") {
    Ok(R"({"v":1,"id":2,"op":"identity","docker":{"registry_mirrors":[]}})");
    auto again = json::parse(ReadAll(root.path("/etc/docker/daemon.json"))).as_object();
    CHECK(again.at("registry-mirrors").as_array().empty());
    CHECK(again.at("insecure-registries").as_array().size() == 3);
    CHECK(again.at("log-driver").as_string() == "json-file");
  }
  SUBCASE("a missing daemon.json (and /etc/docker) is created") {
    fs::remove_all(root.path("/etc/docker"));
    Ok(R"({"v":1,"id":2,"op":"identity","docker":{"insecure_registries":["registry.local"]}})");
    CHECK(ReadAll(root.path("/etc/docker/daemon.json")) ==
          "{\"insecure-registries\":[\"registry.local\"]}\n");
  }
}

TEST_CASE_FIXTURE(Fixture, "identity refuses a daemon.json it cannot merge, before changing anything") {
  GuestRoot root(*this);
  for (std::string bad : {"{\"log-driver\": ", "[1, 2]", "\"text\""}) {
    CAPTURE(bad);
    std::ofstream(root.path("/etc/docker/daemon.json"), std::ios::trunc) << bad;
    auto [code, msg] = Err(R"({"v":1,"id":1,"op":"identity","hostname":"clone-2","dns":["10.0.0.53"],
                               "docker":{"registry_mirrors":["http://m:5000"]}})");
    CHECK(code == "failed");
    CHECK(msg.rfind("docker: " + root.path("/etc/docker/daemon.json") + " is not a JSON object", 0) == 0);
    CHECK(msg.find("nothing was changed") != std::string::npos);
    CHECK(ReadAll(root.path("/etc/docker/daemon.json")) == bad);
  }
  CHECK(ops.calls.empty());
  CHECK(ops.hostname == "host-under-test");
  CHECK(!fs::exists(root.path("/etc/resolv.conf")));
}

TEST_CASE_FIXTURE(Fixture,
                  "identity docker reloads a running dockerd with SIGHUP and confirms it in GET /info") {
  GuestRoot root(*this);
  const std::string config = root.path("/etc/docker/daemon.json");
  std::ofstream(config) << R"({"log-driver": "json-file"})";
  const std::string sock = root.path("/dockerd.sock");
  FakeDockerd dockerd(sock, config);
  // Found through /proc; its API socket comes from its -H flag (as fcwarm-init.sh starts it).
  ops.processes["dockerd"] = {fa::ProcessEntry{4242, {"dockerd", "--bridge=none", "-H", "unix://" + sock}}};
  ops.on_signal = [&] { dockerd.Reload(); };
  const std::string req = R"({"v":1,"id":1,"op":"identity","docker":{
      "registry_mirrors":["http://10.214.7.2:5000"],"insecure_registries":["10.214.7.2:5000"]}})";
  auto d = Ok(req).at("docker").as_object();
  CHECK(d.at("dockerd").as_string() == "reloaded");
  CHECK(d.at("pid").as_int64() == 4242);
  CHECK(d.at("socket").as_string() == sock);
  CHECK(ops.calls == std::vector<std::string>{"replace " + config, "signal 4242 " + std::to_string(SIGHUP)});
  CHECK(dockerd.reloads() == 1);
  auto reqs = dockerd.requests();
  REQUIRE(reqs.size() >= 3);
  CHECK(reqs[0] == "GET /_ping HTTP/1.0");  // answering, so its SIGHUP handler is installed
  CHECK(reqs[1] == "GET /info HTTP/1.0");   // not yet applied
  CHECK(reqs.back() == "GET /info HTTP/1.0");

  SUBCASE("the same settings again: already applied, no signal") {
    ops.calls.clear();
    auto again = Ok(req).at("docker").as_object();
    CHECK(again.at("dockerd").as_string() == "unchanged");
    CHECK(ops.calls == std::vector<std::string>{"replace " + config});
    CHECK(dockerd.reloads() == 1);
  }
  SUBCASE("an insecure registry dropped from the list counts as a change") {
    ops.calls.clear();
    auto again = Ok(R"({"v":1,"id":2,"op":"identity","docker":{"insecure_registries":["10.214.7.0/30"]}})");
    CHECK(again.at("docker").at("dockerd").as_string() == "reloaded");
    CHECK(dockerd.reloads() == 2);
  }
}

TEST_CASE_FIXTURE(Fixture, "identity docker takes the socket and config file from dockerd's command line") {
  GuestRoot root(*this);
  const std::string config = root.path("/custom-daemon.json");
  const std::string sock = root.path("/api.sock");
  FakeDockerd dockerd(sock, config);
  ops.processes["dockerd"] = {
      fa::ProcessEntry{77, {"/usr/bin/dockerd", "--config-file", config, "--host=unix://" + sock}}};
  ops.on_signal = [&] { dockerd.Reload(); };
  auto d = Ok(R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":["https://m.example:443"]}})")
               .at("docker")
               .as_object();
  CHECK(d.at("dockerd").as_string() == "reloaded");
  CHECK(d.at("config_file").as_string() == config);
  CHECK(d.at("socket").as_string() == sock);
  CHECK(!fs::exists(root.path("/etc/docker/daemon.json")));
  CHECK(json::parse(ReadAll(config)).at("registry-mirrors").as_array().at(0).as_string() ==
        "https://m.example:443/");
}

// Found by fcwarm_fuzz_agent (tests/fuzz/corpus-agent/regression-non-utf8-config-file): the reply echoed
// dockerd's --config-file and socket byte for byte, and a path that is not UTF-8 made it invalid JSON (the host
// skipped it as noise and the call ran into its deadline).
TEST_CASE_FIXTURE(Fixture, "identity docker replies valid JSON whatever bytes dockerd's command line holds") {
  GuestRoot root(*this);
  const std::string config = root.path("/daemon-\xff.json");
  const std::string sock = root.path("/api-\xfe.sock");
  FakeDockerd dockerd(sock, config);
  ops.processes["dockerd"] = {fa::ProcessEntry{77, {"dockerd", "--config-file", config, "-H", "unix://" + sock}}};
  ops.on_signal = [&] { dockerd.Reload(); };
  // Call() parses the reply strictly (UTF-8 included).
  auto d = Ok(R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":["https://m.example:443"]}})")
               .at("docker")
               .as_object();
  CHECK(d.at("dockerd").as_string() == "reloaded");
  CHECK(d.at("config_file").as_string() == root.path("/daemon-?.json"));
  CHECK(d.at("socket").as_string() == root.path("/api-?.sock"));
  CHECK(json::parse(ReadAll(config)).at("registry-mirrors").as_array().size() == 1);
}

// Found by fcwarm_fuzz_agent (tests/fuzz/corpus-agent/regression-relative-socket): "-H unix://relative" made the
// agent connect to a path relative to its own working directory.
TEST_CASE_FIXTURE(Fixture, "identity docker skips a relative socket on dockerd's command line and in daemon.json") {
  GuestRoot root(*this);
  const std::string config = root.path("/etc/docker/daemon.json");
  const std::string sock = root.path("/api.sock");
  FakeDockerd dockerd(sock, config);
  ops.on_signal = [&] { dockerd.Reload(); };
  const std::string req = R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":["http://m:5000"]}})";
  SUBCASE("command line") {
    ops.processes["dockerd"] = {fa::ProcessEntry{4242, {"dockerd", "-H", "unix://api.sock", "-H", "unix://" + sock}}};
    CHECK(Ok(req).at("docker").at("socket").as_string() == sock);
  }
  SUBCASE("daemon.json hosts") {
    fs::create_directories(root.path("/etc/docker"));
    std::ofstream(config) << R"({"hosts": ["unix://api.sock", "unix://)" + sock + R"("]})";
    ops.processes["dockerd"] = {fa::ProcessEntry{4242, {"dockerd"}}};
    CHECK(Ok(req).at("docker").at("socket").as_string() == sock);
  }
}

TEST_CASE_FIXTURE(Fixture, "identity docker fails clearly when dockerd does not apply the settings") {
  GuestRoot root(*this);
  const std::string config = root.path("/etc/docker/daemon.json");
  const std::string sock = root.path("/dockerd.sock");
  FakeDockerd dockerd(sock, config);
  ops.processes["dockerd"] = {fa::ProcessEntry{4242, {"dockerd", "-Hunix://" + sock}}};
  // SIGHUP arrives but the daemon keeps its old settings (e.g. a key given both as a flag and in the file).
  auto t0 = std::chrono::steady_clock::now();
  auto [code, msg] = Err(
      R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":["http://m:5000"],"timeout_ms":300}})");
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(code == "failed");
  CHECK(msg.rfind("docker: dockerd (pid 4242) did not apply the registry configuration within 300 ms", 0) ==
        0);
  CHECK(took >= std::chrono::milliseconds(290));
  CHECK(took < std::chrono::seconds(3));
  CHECK(ops.calls.back() == "signal 4242 " + std::to_string(SIGHUP));
}

TEST_CASE_FIXTURE(Fixture, "identity docker with a dockerd that does not answer yet") {
  GuestRoot root(*this);
  const std::string config = root.path("/etc/docker/daemon.json");
  ops.processes["dockerd"] = {
      fa::ProcessEntry{4242, {"dockerd", "-H", "unix://" + root.path("/starting.sock")}}};
  const std::string req =
      R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":["http://m:5000"],"timeout_ms":300}})";
  SUBCASE("the image's init reloads it once it answers: no signal now (it would kill a starting dockerd)") {
    fs::create_directories(root.path("/run/fcwarm"));
    std::ofstream(root.path(std::string(fa::kDockerReloadPendingMarker))) << "";
    auto d = Ok(req).at("docker").as_object();
    CHECK(d.at("dockerd").as_string() == "reload_pending");
    CHECK(ops.calls == std::vector<std::string>{"replace " + config});
  }
  SUBCASE("no init reload pending: waits for it, then fails naming the socket") {
    auto [code, msg] = Err(req);
    CHECK(code == "failed");
    CHECK(msg.rfind("docker: dockerd (pid 4242) did not answer within 300 ms", 0) == 0);
    CHECK(msg.find(root.path("/starting.sock") + ": connect") != std::string::npos);
    CHECK(ops.calls == std::vector<std::string>{"replace " + config});  // written, never signalled
  }
  SUBCASE("it starts answering while the agent waits: reloaded") {
    const std::string sock = root.path("/starting.sock");
    std::unique_ptr<FakeDockerd> dockerd;
    std::thread later([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      dockerd =
          std::make_unique<FakeDockerd>(sock, root.path("/old-config.json"));  // started before the write
    });
    ops.on_signal = [&] {
      // The socket can answer before `dockerd` is assigned: wait for the thread. Reload reads the agent's
      // file.
      if (later.joinable()) later.join();
      std::ofstream(root.path("/old-config.json")) << ReadAll(config);
      dockerd->Reload();
    };
    auto d =
        Ok(R"({"v":1,"id":1,"op":"identity","docker":{"registry_mirrors":["http://m:5000"],"timeout_ms":5000}})")
            .at("docker")
            .as_object();
    if (later.joinable()) later.join();
    CHECK(d.at("dockerd").as_string() == "reloaded");
  }
}

TEST_CASE("LinuxSystemOps file, process and signal primitives") {
  fa::LinuxSystemOps sys;
  TempDir dir;
  SUBCASE("ReadFile") {
    CHECK(!sys.ReadFile(dir.path + "/absent", 10).exists);
    CHECK(sys.ReadFile(dir.path + "/absent", 10).error.empty());
    std::ofstream(dir.path + "/f") << "0123456789abc";
    auto f = sys.ReadFile(dir.path + "/f", 10);
    CHECK(f.exists);
    CHECK(f.content == "0123456789");
    CHECK(f.truncated);
    CHECK(!sys.ReadFile(dir.path + "/f", 100).truncated);
    auto d = sys.ReadFile(dir.path, 100);  // a directory: exists, cannot be read
    CHECK(d.exists);
    CHECK(!d.error.empty());
  }
  SUBCASE("ReplaceFile") {
    CHECK(sys.ReplaceFile(dir.path + "/new/file", "one", 0600).ok());  // parent created
    CHECK(ReadAll(dir.path + "/new/file") == "one");
    CHECK((fs::status(dir.path + "/new/file").permissions() & fs::perms::all) ==
          (fs::perms::owner_read | fs::perms::owner_write));
    std::ofstream(dir.path + "/target") << "keep";
    fs::create_symlink(dir.path + "/target", dir.path + "/link");
    CHECK(sys.ReplaceFile(dir.path + "/link", "two", 0644).ok());
    CHECK(!fs::is_symlink(dir.path + "/link"));
    CHECK(ReadAll(dir.path + "/link") == "two");
    CHECK(ReadAll(dir.path + "/target") == "keep");
    CHECK(!sys.ReplaceFile("relative", "x", 0644).ok());
    auto s = sys.ReplaceFile(dir.path + "/a/b/c", "x", 0644);  // only one missing level is created
    CHECK(s.error.find(dir.path + "/a/b") != std::string::npos);
    int files = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir.path)) files += e.is_regular_file();
    CHECK(files == 3);  // new/file, target, link: no temporary file left
  }
  SUBCASE("FindProcesses and SendSignal") {
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      execlp("sleep", "sleep", "30", "0.5", static_cast<char*>(nullptr));
      _exit(127);
    }
    std::vector<fa::ProcessEntry> found;
    for (int i = 0; i < 200; ++i) {
      found = sys.FindProcesses("sleep");
      if (std::any_of(found.begin(), found.end(), [&](const auto& p) { return p.pid == child; })) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    auto it = std::find_if(found.begin(), found.end(), [&](const auto& p) { return p.pid == child; });
    REQUIRE(it != found.end());
    CHECK(it->argv == std::vector<std::string>{"sleep", "30", "0.5"});
    CHECK(sys.SendSignal(child, SIGTERM).ok());
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGTERM);
    CHECK(!sys.SendSignal(0, SIGTERM).ok());
    CHECK(sys.FindProcesses("no-such-comm-xyz").empty());
  }
}

namespace {

// An HTTP server on a Unix socket for one connection that sends its answer in pieces: piece i goes out once
// Release(i + 1) was called; after the last piece it closes.
class StagedHttpServer {
 public:
  StagedHttpServer(const std::string& path, std::vector<std::string> pieces) : pieces_(std::move(pieces)) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(fd_, 4) == 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~StagedHttpServer() {
    Release(pieces_.size());
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  void Release(std::size_t n) {
    std::lock_guard l(mu_);
    released_ = std::max(released_, n);
    cv_.notify_all();
  }

 private:
  void Serve() {
    int c = accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    char buf[4096];
    std::string req;
    while (req.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = read(c, buf, sizeof buf);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
    }
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      std::unique_lock l(mu_);
      cv_.wait(l, [&] { return released_ > i; });
      l.unlock();
      if (send(c, pieces_[i].data(), pieces_[i].size(), MSG_NOSIGNAL) < 0) break;
    }
    close(c);
  }
  std::vector<std::string> pieces_;
  int fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t released_ = 0;
};

std::string StartReq(const std::string& socket, const std::string& extra = "") {
  return R"({"v":1,"id":2,"op":"docker_start","method":"POST","path":"/v1.41/images/create?fromImage=x&tag=1",)"
         R"("socket":")" + socket + "\"" + extra + "}";
}
std::string ReadReq(uint64_t job, int wait_ms) {
  return R"({"v":1,"id":3,"op":"docker_read","job":)" + std::to_string(job) + R"(,"wait_ms":)" +
         std::to_string(wait_ms) + "}";
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "docker_start streams a response body to docker_read as it arrives") {
  TempDir dir;
  const std::string sock = dir.path + "/docker.sock";
  const std::string line1 = R"({"status":"Pulling fs layer","id":"a1"})" "\n";
  const std::string line2 = R"({"status":"Pull complete","id":"a1"})" "\n";
  StagedHttpServer d(sock, {"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + line1, line2});
  uint64_t job = Ok(StartReq(sock, R"(,"timeout_ms":20000)")).at("job").to_number<uint64_t>();
  CHECK(job > 0);
  // Nothing was released yet: a short wait returns no bytes, status 0, not done.
  auto r0 = Ok(ReadReq(job, 100));
  CHECK(r0.at("status").as_int64() == 0);
  CHECK(Decode(r0.at("body_b64")).empty());
  CHECK(!r0.at("done").as_bool());
  d.Release(1);
  auto r1 = Ok(ReadReq(job, 5000));
  CHECK(r1.at("status").as_int64() == 200);
  CHECK(r1.at("offset").to_number<uint64_t>() == 0);
  CHECK(Decode(r1.at("body_b64")) == line1);  // the first line, while the exchange still runs
  CHECK(!r1.at("done").as_bool());
  d.Release(2);
  std::string rest;
  bool done = false;
  for (int i = 0; i < 50 && !done; ++i) {
    auto r = Ok(ReadReq(job, 1000));
    if (!Decode(r.at("body_b64")).empty()) CHECK(r.at("offset").to_number<uint64_t>() == line1.size() + rest.size());
    rest += Decode(r.at("body_b64"));
    done = r.at("done").as_bool();
    CHECK(r.at("dropped").to_number<uint64_t>() == 0);
    CHECK(!r.contains("error"));
  }
  CHECK(done);
  CHECK(rest == line2);
  // Read to its end, the job is forgotten.
  auto [code, msg] = Err(ReadReq(job, 0));
  CHECK(code == "not_found");
  CHECK(msg.find("no docker job " + std::to_string(job)) != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "docker_start without a streaming SystemOps hands over the whole body at the end") {
  TempDir dir;
  const std::string sock = dir.path + "/docker.sock";
  ops.stream_for_real = false;
  FakeHttpServer d(sock, "HTTP/1.0 200 OK\r\n\r\n{\"status\":\"Status: done\"}\n");
  uint64_t job = Ok(StartReq(sock)).at("job").to_number<uint64_t>();
  std::string body;
  bool done = false;
  for (int i = 0; i < 50 && !done; ++i) {
    auto r = Ok(ReadReq(job, 1000));
    body += Decode(r.at("body_b64"));
    done = r.at("done").as_bool();
  }
  CHECK(done);
  CHECK(body == "{\"status\":\"Status: done\"}\n");
  REQUIRE(ops.http_calls.size() == 1);
  CHECK(ops.http_calls[0].max_body == fa::kMaxStreamBytes);
}

TEST_CASE_FIXTURE(Fixture, "docker jobs: a failed exchange, bad arguments, cancel, the job limit") {
  TempDir dir;
  SUBCASE("no daemon: the read that ends the job carries the error") {
    uint64_t job = Ok(StartReq(dir.path + "/missing.sock")).at("job").to_number<uint64_t>();
    json::object r;
    for (int i = 0; i < 50; ++i) {
      r = Ok(ReadReq(job, 1000));
      if (r.at("done").as_bool()) break;
    }
    REQUIRE(r.at("done").as_bool());
    std::string error(r.at("error").as_string());
    CHECK(error.find("docker POST /v1.41/images/create") == 0);
    CHECK(error.find("missing.sock: connect") != std::string::npos);
    CHECK(!r.at("timed_out").as_bool());
  }
  SUBCASE("bad arguments name the field") {
    auto [c1, m1] = Err(R"({"v":1,"id":2,"op":"docker_start","method":"PATCH","path":"/x"})");
    CHECK(c1 == "bad_request");
    CHECK(m1.find("method must be one of") == 0);
    auto [c2, m2] = Err(R"({"v":1,"id":3,"op":"docker_read"})");
    CHECK(c2 == "bad_request");
    CHECK(m2 == "job is required");
    auto [c3, m3] = Err(R"({"v":1,"id":3,"op":"docker_read","job":-4})");
    CHECK(m3 == "job must be a positive integer");
    auto [c4, m4] = Err(ReadReq(99, 9000));
    CHECK(m4 == "wait_ms must be in 0..5000");
    auto [c5, m5] = Err(ReadReq(12345, 0));
    CHECK(c5 == "not_found");
  }
  SUBCASE("cancel forgets a running job at once; a second cancel finds nothing") {
    const std::string sock = dir.path + "/docker.sock";
    StagedHttpServer d(sock, {"HTTP/1.0 200 OK\r\n\r\nfirst\n", "second\n"});
    d.Release(1);
    uint64_t job = Ok(StartReq(sock, R"(,"timeout_ms":20000)")).at("job").to_number<uint64_t>();
    auto r = Ok(ReadReq(job, 5000));
    CHECK(Decode(r.at("body_b64")) == "first\n");
    auto c = Ok(R"({"v":1,"id":4,"op":"docker_cancel","job":)" + std::to_string(job) + "}");
    CHECK(c.at("cancelled").as_bool());
    CHECK(Err(ReadReq(job, 0)).first == "not_found");
    auto c2 = Ok(R"({"v":1,"id":5,"op":"docker_cancel","job":)" + std::to_string(job) + "}");
    CHECK(!c2.at("cancelled").as_bool());
    d.Release(2);  // the exchange then stops at its next piece
  }
  SUBCASE("at most kMaxDockerJobs unread jobs") {
    std::vector<uint64_t> jobs;
    for (std::size_t i = 0; i < fa::kMaxDockerJobs; ++i)
      jobs.push_back(Ok(StartReq(dir.path + "/missing.sock")).at("job").to_number<uint64_t>());
    auto [code, msg] = Err(StartReq(dir.path + "/missing.sock"));
    CHECK(code == "busy");
    CHECK(msg.find("docker jobs") != std::string::npos);
    // Reading one to its end makes room.
    for (int i = 0; i < 50; ++i)
      if (Ok(ReadReq(jobs[0], 1000)).at("done").as_bool()) break;
    CHECK(Ok(StartReq(dir.path + "/missing.sock")).at("job").to_number<uint64_t>() > jobs.back());
  }
}

// ---- launch (parked containers) ---------------------------------------------------------------------------

namespace {

// A launch channel under <root>/run/fcwarm/parked/<name>: the two FIFOs a snapshot build creates.
struct LaunchChannel {
  explicit LaunchChannel(const std::string& root, const std::string& name = "p1")
      : rel(std::string(fa::kParkedDir) + name), dir(root + rel) {
    fs::create_directories(dir);
    REQUIRE(::mkfifo((dir + "/spec").c_str(), 0600) == 0);
    REQUIRE(::mkfifo((dir + "/ack").c_str(), 0600) == 0);
  }
  std::string rel, dir;
};

std::string LaunchLine(const std::string& channel, const std::string& fields) {
  return R"({"v":1,"id":1,"op":"launch","channel":")" + channel + "\"" + fields + "}";
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "launch validates its fields and names them") {
  TempDir root;
  ctx.root = root.path;
  LaunchChannel ch(root.path);
  auto msg = [&](const std::string& line) { return Err(line); };
  CHECK(msg(R"({"v":1,"id":1,"op":"launch"})").second == "channel is required");
  for (const char* bad : {"/tmp/x", "/run/fcwarm/parked/", "/run/fcwarm/parked/..", "/run/fcwarm/parked/a/b",
                          "/run/fcwarm/parked/a b"}) {
    CAPTURE(bad);
    CHECK(msg(LaunchLine(bad, R"(,"argv":["true"])")).second.find("channel must be") == 0);
  }
  CHECK(msg(LaunchLine(ch.rel, "")).second == "argv is required");
  CHECK(msg(LaunchLine(ch.rel, R"(,"argv":[])")).second == "argv must not be empty");
  CHECK(msg(LaunchLine(ch.rel, R"(,"argv":["true"],"env":["NOEQUALS"])")).second.find("env[0]") == 0);
  CHECK(msg(LaunchLine(ch.rel, R"(,"argv":["true"],"env":"A=1")")).second.find("env must be") == 0);
  CHECK(msg(LaunchLine(ch.rel, R"(,"argv":["true"],"cwd":"relative")")).second.find("cwd must be") == 0);
  CHECK(msg(LaunchLine(ch.rel, R"(,"argv":["true"],"probe":1)")).second.find("probe must be") == 0);
  CHECK(msg(LaunchLine(ch.rel, R"(,"argv":["true"],"timeout_ms":0)")).second.find("timeout_ms") == 0);
}

TEST_CASE_FIXTURE(Fixture, "launch without a waiting launcher answers not_waiting, a probe says so") {
  TempDir root;
  ctx.root = root.path;
  LaunchChannel ch(root.path);
  CHECK(!Ok(LaunchLine(ch.rel, R"(,"probe":true)")).at("waiting").as_bool());
  auto t0 = std::chrono::steady_clock::now();
  auto [code, message] = Err(LaunchLine(ch.rel, R"(,"argv":["true"],"timeout_ms":100)"));
  CHECK(code == "not_waiting");
  CHECK(message.find(ch.rel) != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  auto missing = Err(LaunchLine(std::string(fa::kParkedDir) + "nope", R"(,"argv":["true"])"));
  CHECK(missing.first == "failed");
  CHECK(missing.second.find("No such file") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "launch writes the spec format and reports the reader's message") {
  TempDir root;
  ctx.root = root.path;
  LaunchChannel ch(root.path);
  std::string got;
  std::thread reader([&] {
    int fd = ::open((ch.dir + "/spec").c_str(), O_RDONLY | O_CLOEXEC);  // blocks until the agent opens
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
    ::close(fd);
    int ack = ::open((ch.dir + "/ack").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    REQUIRE(ack >= 0);
    CHECK(::write(ack, "boom: no such thing", 19) == 19);
    ::close(ack);
  });
  auto [code, message] =
      Err(LaunchLine(ch.rel, R"(,"argv":["a","b c"],"env":["X=1"],"cwd":"/w","user":"7:8","timeout_ms":5000)"));
  reader.join();
  CHECK(code == "launch_failed");
  CHECK(message == "boom: no such thing");
  using namespace std::string_literals;
  CHECK(got == "fcwarm-launch/1\0arg\0a\0arg\0b c\0env\0X=1\0cwd\0/w\0user\0007:8\0"s);
}

#ifdef FCWARM_LAUNCHER
TEST_CASE_FIXTURE(Fixture, "launch hands a spec to the real launcher, which execs the command in place") {
  TempDir root;
  ctx.root = root.path;
  LaunchChannel ch(root.path);
  const std::string out = root.path + "/out", err = root.path + "/err", hostfile = root.path + "/hostname";
  { std::ofstream(hostfile) << "old-name\n"; }
  auto start_launcher = [&] {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, 1);
      ::dup2(e, 2);
      ::execl(FCWARM_LAUNCHER, FCWARM_LAUNCHER, ch.dir.c_str(), static_cast<char*>(nullptr));
      ::_exit(126);
    }
    // Waiting: probes succeed (and are ignored by the launcher).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!Ok(LaunchLine(ch.rel, R"(,"probe":true)")).at("waiting").as_bool()) {
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pid;
  };
  auto exit_code = [](pid_t pid) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
  };
  char host[256] = "";
  REQUIRE(::gethostname(host, sizeof host - 1) == 0);
  const std::string uid = std::to_string(::getuid()) + ":" + std::to_string(::getgid());

  SUBCASE("argv, env, working directory, user, hostname file; the command keeps the launcher's pid") {
    pid_t pid = start_launcher();
    const std::string cwd = root.path + "/work/dir";  // missing: created, as Docker does
    auto r = Ok(LaunchLine(ch.rel, R"(,"argv":["sh","-c","echo $$ $FOO/$HOSTNAME; pwd; id -u; echo oops >&2; exit 3"],)"
                                   R"("env":["FOO=one","FOO=bar"],"cwd":")" +
                                       cwd + R"(","user":")" + uid + R"(","hostname_file":")" + hostfile + "\""));
    CHECK(r.at("started").as_bool());
    CHECK(exit_code(pid) == 3);
    CHECK(ReadAll(out) == std::to_string(pid) + " bar/" + host + "\n" + cwd + "\n" + std::to_string(::getuid()) +
                              "\n");
    CHECK(ReadAll(err) == "oops\n");
    CHECK(ReadAll(hostfile) == std::string(host) + "\n");
  }
  SUBCASE("a command that cannot start: launch_failed, the message on stderr, exit 127") {
    pid_t pid = start_launcher();
    auto [code, message] = Err(LaunchLine(ch.rel, R"(,"argv":["no-such-program-fcwarm"],"user":")" + uid + "\""));
    CHECK(code == "launch_failed");
    CHECK(message == "exec: \"no-such-program-fcwarm\": executable file not found in $PATH");
    CHECK(exit_code(pid) == 127);
    CHECK(ReadAll(err) == "fcwarm-launch: " + message + "\n");
  }
  SUBCASE("an unknown user name fails like Docker") {
    pid_t pid = start_launcher();
    auto [code, message] = Err(LaunchLine(ch.rel, R"(,"argv":["true"],"user":"no-such-user-fcwarm")"));
    CHECK(code == "launch_failed");
    CHECK(message.find("unable to find user no-such-user-fcwarm") == 0);
    CHECK(exit_code(pid) == 127);
  }
}
#endif
