// The guest channel (src/guest/stream_channel.*) against a hostile agent on the other end of a socketpair:
// oversized lines, invalid JSON, replies to the wrong request, floods, trickles and silence. Each case checks
// that the host's memory stays within the channel's caps (StreamChannelStats), that the call returns within its
// deadline plus a margin, and how it fails: a protocol violation is DataLoss and breaks the channel for good,
// a guest that merely does not answer is DeadlineExceeded. No VM needed (label `unit`).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "guest/stream_channel.hpp"

namespace json = boost::json;
using namespace fcwarm;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxReply = 1u << 20;   // the channel's line cap in these tests
constexpr size_t kMaxDecode = 2u << 20;  // and its decode cap

// One request as the peer read it.
struct Request {
  int64_t id = 0;
  std::string op;
  json::object args;
};

// The agent's end of one connection.
class PeerConn {
 public:
  explicit PeerConn(int fd) : fd_(fd) {}
  // The next request line, or false when the host closed the connection.
  bool Read(Request* r) {
    while (true) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        auto v = json::parse(buf_.substr(0, nl)).as_object();
        buf_.erase(0, nl + 1);
        r->id = v.at("id").as_int64();
        r->op = std::string(v.at("op").as_string());
        r->args = std::move(v);
        return true;
      }
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return false;
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  // False once the host is gone.
  bool Send(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  bool Reply(int64_t id, json::object result) {
    return Send(json::serialize(json::object{{"v", 1}, {"id", id}, {"ok", true}, {"result", std::move(result)}}) +
                "\n");
  }
  // Waits until the host closes its end (so a connection's behaviour can end without a hang-up of its own).
  void DrainUntilClosed() {
    char chunk[4096];
    while (::recv(fd_, chunk, sizeof(chunk), 0) > 0) {
    }
  }

 private:
  int fd_;
  std::string buf_;
};

// Every connection the channel opens is a fresh socketpair; the agent's end runs `behave` on a thread of its
// own. Declare the Peer before the channel, so the channel (and its connection) goes first.
class Peer {
 public:
  explicit Peer(std::function<void(PeerConn&)> behave) : behave_(std::move(behave)) {}
  ~Peer() {
    for (auto& t : threads_) t.join();
  }
  guest::Connector connector() {
    return [this](std::chrono::milliseconds) -> Result<int> {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        return Status::Unavailable(std::string("socketpair: ") + std::strerror(errno));
      }
      ++connections_;
      std::lock_guard<std::mutex> l(mu_);
      threads_.emplace_back([this, fd = sv[1]] {
        PeerConn c(fd);
        behave_(c);
        ::close(fd);
      });
      return sv[0];
    };
  }
  int connections() const { return connections_.load(); }

 private:
  std::function<void(PeerConn&)> behave_;
  std::mutex mu_;
  std::vector<std::thread> threads_;
  std::atomic<int> connections_{0};
};

struct Bed {
  explicit Bed(std::function<void(PeerConn&)> behave) : peer(std::move(behave)) {
    guest::StreamChannelOptions o;
    o.max_reply_bytes = kMaxReply;
    o.max_decode_bytes = kMaxDecode;
    o.label = "vm test: ";
    o.stats = stats;
    channel = guest::MakeStreamGuestChannel(peer.connector(), o);
  }
  Peer peer;
  std::shared_ptr<guest::StreamChannelStats> stats = std::make_shared<guest::StreamChannelStats>();
  std::unique_ptr<GuestChannel> channel;

  // Memory never beyond the caps, whatever the peer sent.
  void CheckBounded() const {
    CHECK(stats->peak_line_bytes.load() <= kMaxReply + 1);
    CHECK(stats->peak_decode_bytes.load() <= kMaxDecode);
  }
};

ExecRequest Exec(std::string what) {
  ExecRequest r;
  r.argv = {std::move(what)};
  return r;
}

json::object ExecResult(std::string out_b64 = "") {
  return {{"exit_code", 0}, {"stdout_b64", std::move(out_b64)}, {"stderr_b64", ""}, {"truncated", false}};
}

// Runs `call`, returns its status and checks that it returned within `limit`.
template <typename F>
Status Timed(F&& call, std::chrono::milliseconds limit) {
  auto t0 = Clock::now();
  Status st = call();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  CHECK_MESSAGE(took < limit, "took " << took.count() << " ms: " << st.ToString());
  return st;
}

// The channel refuses every later call at once, without connecting again.
void CheckBroken(Bed& bed) {
  const int before = bed.peer.connections();
  auto t0 = Clock::now();
  auto again = bed.channel->Ping(5s);
  CHECK(Clock::now() - t0 < 200ms);
  CHECK(again.status().code() == StatusCode::kDataLoss);
  CHECK_MESSAGE(again.status().message().find("earlier protocol violation") != std::string::npos,
                again.status().message());
  CHECK(bed.peer.connections() == before);
}

}  // namespace

TEST_CASE("hostile guest: a line without end is cut at the line cap, a protocol violation") {
  Bed bed([](PeerConn& c) {
    Request r;
    if (!c.Read(&r)) return;
    std::string chunk(64 * 1024, 'x');
    while (c.Send(chunk)) {  // endless, never a newline, until the host hangs up
    }
  });
  auto st = Timed([&] { return bed.channel->Exec(Exec("x"), 10s).status(); }, 2000ms);
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK_MESSAGE(st.message().find("vm test: guest agent exec: protocol violation: reply line longer than 1048576 bytes") == 0,
                st.message());
  bed.CheckBounded();
  CHECK(bed.stats->peak_line_bytes.load() == kMaxReply + 1);  // just enough to see that the line is too long
  CHECK(bed.stats->violations.load() == 1);
  CheckBroken(bed);
}

TEST_CASE("hostile guest: a long line with its newline is refused the same way") {
  Bed bed([](PeerConn& c) {
    Request r;
    if (!c.Read(&r)) return;
    (void)c.Send(std::string(kMaxReply + 10, 'y') + "\n");
    c.DrainUntilClosed();
  });
  auto st = bed.channel->Ping(5s).status();
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK(st.message().find("longer than") != std::string::npos);
  bed.CheckBounded();
}

TEST_CASE("hostile guest: invalid JSON is tolerated as noise up to the limit, then a violation") {
  SUBCASE("a little noise before the reply is fine") {
    Bed bed([](PeerConn& c) {
      Request r;
      while (c.Read(&r)) {
        for (int i = 0; i < 16; ++i) (void)c.Send("}{ not json\n");
        (void)c.Reply(r.id, {{"hostname", "h"}});
      }
    });
    for (int i = 0; i < 3; ++i) {
      auto r = bed.channel->Ping(5s);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CHECK(r->hostname == "h");
    }
    CHECK(bed.stats->violations.load() == 0);
    CHECK(bed.peer.connections() == 1);
  }
  SUBCASE("an endless stream of it is a violation at the 17th line") {
    Bed bed([](PeerConn& c) {
      Request r;
      if (!c.Read(&r)) return;
      while (c.Send("}{ not json \x01\n")) {
      }
    });
    auto st = Timed([&] { return bed.channel->Ping(10s).status(); }, 2000ms);
    CHECK(st.code() == StatusCode::kDataLoss);
    CHECK_MESSAGE(st.message().find("protocol violation: 17 lines that answer no outstanding request (the last: a "
                                    "line that is not a JSON object: \"}{ not json ?\")") != std::string::npos,
                  st.message());
    bed.CheckBounded();
    CheckBroken(bed);
  }
}

TEST_CASE("hostile guest: replies to the wrong request") {
  SUBCASE("ids never sent") {
    Bed bed([](PeerConn& c) {
      Request r;
      if (!c.Read(&r)) return;
      for (int i = 0; i < 100 && c.Reply(r.id + 1000, {{"hostname", "wrong"}}); ++i) {
      }
      c.DrainUntilClosed();
    });
    auto st = bed.channel->Ping(5s).status();
    CHECK(st.code() == StatusCode::kDataLoss);
    CHECK_MESSAGE(st.message().find("(the last: a reply to id 1001, which was never sent)") != std::string::npos,
                  st.message());
    CheckBroken(bed);
  }
  SUBCASE("repeats of a reply the host has already") {
    Bed bed([](PeerConn& c) {
      Request r;
      int64_t first = 0;
      while (c.Read(&r)) {
        if (first == 0) {
          first = r.id;
          (void)c.Reply(r.id, {{"hostname", "h"}});
          continue;
        }
        for (int i = 0; i < 20; ++i) (void)c.Reply(first, {{"hostname", "again"}});
        (void)c.Reply(r.id, {{"hostname", "h"}});
      }
    });
    REQUIRE(bed.channel->Ping(5s).ok());
    auto st = bed.channel->Ping(5s).status();
    CHECK(st.code() == StatusCode::kDataLoss);
    CHECK_MESSAGE(st.message().find("a reply to id 1, which is not outstanding") != std::string::npos, st.message());
  }
  SUBCASE("ids without a number") {
    Bed bed([](PeerConn& c) {
      Request r;
      if (!c.Read(&r)) return;
      for (int i = 0; i < 17; ++i) (void)c.Send(R"({"v":1,"id":"1","ok":true,"result":{}})" "\n");
      c.DrainUntilClosed();
    });
    auto st = bed.channel->Ping(5s).status();
    CHECK(st.code() == StatusCode::kDataLoss);
    CHECK(st.message().find("a reply without an integer id") != std::string::npos);
  }
}

TEST_CASE("hostile guest: late replies of calls that timed out are skipped without counting") {
  // An agent that starts late answers every ping the host sent while it waited (docs/guest.md: the requests
  // queue up in the port), then the current one.
  Bed bed([](PeerConn& c) {
    Request r;
    std::vector<int64_t> held;
    while (c.Read(&r)) {
      held.push_back(r.id);
      if (held.size() < 40) continue;
      for (auto id : held) (void)c.Reply(id, {{"hostname", "h" + std::to_string(id)}});
      held.clear();
    }
  });
  for (int i = 0; i < 39; ++i) {
    CHECK(bed.channel->Ping(5ms).status().code() == StatusCode::kDeadlineExceeded);
  }
  auto r = bed.channel->Ping(5s);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->hostname == "h40");
  CHECK(bed.stats->violations.load() == 0);
  CHECK(bed.peer.connections() == 1);
}

TEST_CASE("hostile guest: a reply that needs more memory to decode than the cap") {
  // Under the line cap, but each "0," becomes a JSON value of its own: ~8x the line in memory.
  Bed bed([](PeerConn& c) {
    Request r;
    if (!c.Read(&r)) return;
    std::string arr = "[0";
    while (arr.size() < kMaxReply - 100) arr += ",0";
    arr += "]";
    (void)c.Send(R"({"v":1,"id":)" + std::to_string(r.id) + R"(,"ok":true,"result":{"a":)" + arr + "}}\n");
    c.DrainUntilClosed();
  });
  auto st = bed.channel->Ping(10s).status();
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK_MESSAGE(st.message().find("bytes of memory to decode") != std::string::npos, st.message());
  bed.CheckBounded();
  CHECK(bed.stats->peak_line_bytes.load() > kMaxReply / 2);
}

TEST_CASE("hostile guest: a flood of big lines is read one line at a time") {
  // Lines just under the cap, each a reply to an id never sent: the buffer holds one at a time and the 17th
  // ends the call.
  Bed bed([](PeerConn& c) {
    Request r;
    if (!c.Read(&r)) return;
    std::string pad(kMaxReply - 200, 'p');
    const std::string line = R"({"v":1,"id":999999,"ok":true,"result":{"pad":")" + pad + "\"}}\n";
    while (c.Send(line)) {
    }
  });
  auto st = Timed([&] { return bed.channel->Ping(20s).status(); }, 5000ms);
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK(st.message().find("17 lines") != std::string::npos);
  bed.CheckBounded();
}

TEST_CASE("hostile guest: malformed replies to the right id") {
  struct Case {
    std::string result;  // what follows "ok": in the reply
    std::string expect;
  };
  for (const Case& c : std::vector<Case>{
           {R"(true})", "says ok but has no result object"},
           {R"(true,"result":[1]})", "says ok but has no result object"},
           {R"("yes","result":{}})", "neither ok:true with a result nor ok:false with an error"},
           {R"(false,"error":"x"})", "neither ok:true with a result nor ok:false with an error"},
           {R"(true,"result":{"exit_code":0,"stdout_b64":"!!!!"}})", "stdout_b64 of the reply is not base64"},
       }) {
    CAPTURE(c.result);
    Bed bed([&c](PeerConn& conn) {
      Request r;
      if (!conn.Read(&r)) return;
      (void)conn.Send(R"({"v":1,"id":)" + std::to_string(r.id) + R"(,"ok":)" + c.result + "\n");
      conn.DrainUntilClosed();
    });
    auto st = bed.channel->Exec(Exec("x"), 5s).status();
    CHECK(st.code() == StatusCode::kDataLoss);
    CHECK_MESSAGE(st.message().find(c.expect) != std::string::npos, st.message());
    CheckBroken(bed);
  }
}

TEST_CASE("hostile guest: an agent's error text is cut and stripped of control characters") {
  Bed bed([](PeerConn& c) {
    Request r;
    if (!c.Read(&r)) return;
    json::object err{{"code", "failed"}, {"message", "line1\nline2\r\x1b[31m" + std::string(100000, 'm')}};
    (void)c.Send(json::serialize(json::object{{"v", 1}, {"id", r.id}, {"ok", false}, {"error", err}}) + "\n");
    c.DrainUntilClosed();
  });
  auto st = bed.channel->Exec(Exec("x"), 5s).status();
  CHECK(st.code() == StatusCode::kUnavailable);  // an error the agent may report: not a violation
  CHECK(st.message().size() < 4300);
  CHECK(st.message().find("line1 line2  [31m") != std::string::npos);
  CHECK(st.message().find('\n') == std::string::npos);
  CHECK(bed.stats->violations.load() == 0);
}

TEST_CASE("hostile guest: silence and a trickle end at the deadline, not a violation") {
  SUBCASE("never answers") {
    Bed bed([](PeerConn& c) { c.DrainUntilClosed(); });
    auto st = Timed([&] { return bed.channel->Exec(Exec("x"), 300ms).status(); }, 800ms);
    CHECK(st.code() == StatusCode::kDeadlineExceeded);
    CHECK(bed.stats->violations.load() == 0);
    // The channel stays usable (the next call is bounded the same way).
    CHECK(Timed([&] { return bed.channel->Ping(200ms).status(); }, 700ms).code() ==
          StatusCode::kDeadlineExceeded);
  }
  SUBCASE("one byte at a time, never a newline") {
    Bed bed([](PeerConn& c) {
      Request r;
      if (!c.Read(&r)) return;
      while (c.Send("{")) std::this_thread::sleep_for(5ms);
    });
    auto st = Timed([&] { return bed.channel->Ping(400ms).status(); }, 900ms);
    CHECK(st.code() == StatusCode::kDeadlineExceeded);
    bed.CheckBounded();
  }
}

TEST_CASE("hostile guest: a call waiting for a busy channel keeps its own deadline") {
  Bed bed([](PeerConn& c) { c.DrainUntilClosed(); });
  std::thread slow([&] { (void)bed.channel->Exec(Exec("x"), 3s); });
  std::this_thread::sleep_for(100ms);  // the exec holds the channel
  auto st = Timed([&] { return bed.channel->Ping(200ms).status(); }, 700ms);
  CHECK(st.code() == StatusCode::kDeadlineExceeded);
  CHECK_MESSAGE(st.message().find("another call held the channel") != std::string::npos, st.message());
  slow.join();
}
