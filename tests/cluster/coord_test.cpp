// Cluster coordination against a real etcd (label `cluster`): each test case starts Debian's etcd on
// 127.0.0.1 with free ports and a data directory of its own, and removes both at the end. Without the etcd
// binary the cases that need it print "SKIP: ..." and pass, unless FCWARM_REQUIRE_CLUSTER=1.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "coord/coordination_url.hpp"
#include "coord/etcd_client.hpp"
#include "coord/single_flight.hpp"
#include "util/common.hpp"
#include "util/process.hpp"

namespace fs = std::filesystem;
using namespace fcwarm;
using namespace fcwarm::coord;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

bool Required() {
  const char* e = std::getenv("FCWARM_REQUIRE_CLUSTER");
  return e != nullptr && std::string(e) == "1";
}

long Ms(Clock::duration d) { return static_cast<long>(std::chrono::duration_cast<milliseconds>(d).count()); }

// Two distinct free TCP ports on 127.0.0.1 (both sockets are open while the second is chosen).
std::vector<uint16_t> FreePorts(int n) {
  std::vector<int> fds;
  std::vector<uint16_t> ports;
  for (int i = 0; i < n; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    ports.push_back(ntohs(a.sin_port));
    fds.push_back(fd);
  }
  for (int fd : fds) ::close(fd);
  return ports;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fresh directory from a mkdtemp() template, removed with its contents at destruction.
class ScratchDir {
 public:
  explicit ScratchDir(std::string tmpl) {
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~ScratchDir() { util::RemoveTree(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A one-member etcd on 127.0.0.1, removed (process and data directory) at destruction.
class EtcdServer {
 public:
  EtcdServer() {
    auto ports = FreePorts(2);
    client_port_ = ports[0];
    const std::string client = "http://127.0.0.1:" + std::to_string(ports[0]);
    const std::string peer = "http://127.0.0.1:" + std::to_string(ports[1]);
    util::SpawnOptions opts;
    opts.argv = {"etcd",
                 "--name",
                 "coord-test",
                 "--data-dir",
                 (dir_ / "data").string(),
                 "--listen-client-urls",
                 client,
                 "--advertise-client-urls",
                 client,
                 "--listen-peer-urls",
                 peer,
                 "--initial-advertise-peer-urls",
                 peer,
                 "--initial-cluster",
                 "coord-test=" + peer,
                 "--initial-cluster-state",
                 "new"};
    opts.stdout_path = (dir_ / "etcd.log").string();
    auto child = util::Spawn(opts);
    REQUIRE_MESSAGE(child.ok(), child.status().ToString());
    pid_ = child->pid;
    // Ready when a read answers.
    auto cfg = ParseCoordinationUrl(Url());
    REQUIRE(cfg.ok());
    auto probe = EtcdClient::Create(cfg->endpoints, {milliseconds(200), milliseconds(1000)});
    REQUIRE(probe.ok());
    const auto start = Clock::now();
    Status last;
    while (Clock::now() - start < seconds(20)) {
      if (auto st = util::TryReap(pid_)) {
        pid_ = -1;
        FAIL("etcd exited (" << util::DescribeWaitStatus(*st) << "): " << ReadAll(dir_ / "etcd.log"));
      }
      auto r = (*probe)->Get("/probe");
      if (r.ok()) {
        MESSAGE("etcd ready on " << client << " in " << Ms(Clock::now() - start) << " ms");
        return;
      }
      last = r.status();
      std::this_thread::sleep_for(milliseconds(50));
    }
    FAIL("etcd did not answer within 20 s: " << last.ToString() << "\n" << ReadAll(dir_ / "etcd.log"));
  }
  std::string Url() const { return "etcd://127.0.0.1:" + std::to_string(client_port_); }
  int pid() const { return pid_; }
  CoordinationConfig Config() const {
    auto cfg = ParseCoordinationUrl(Url());
    REQUIRE(cfg.ok());
    return *cfg;
  }

 private:
  ScratchDir scratch_{"/tmp/fcwarm-coord-etcd-XXXXXX"};
  const fs::path dir_ = scratch_.path();
  int pid_ = -1;
  // Ends etcd before the scratch directory is removed, also when the constructor fails.
  struct Reaper {
    int* pid;
    ~Reaper() {
      if (*pid <= 0) return;
      ::kill(*pid, SIGCONT);  // in case a test stopped it
      util::TerminateAndReap(*pid, seconds(5));
    }
  } reaper_{&pid_};
  uint16_t client_port_ = 0;
};

// The skip reason, or "" when etcd is installed.
std::string SkipReason() {
  if (!util::FindProgram("etcd")) return "the etcd binary is not installed (Debian package etcd-server)";
  return "";
}

#define SKIP_WITHOUT_ETCD()                                         \
  do {                                                              \
    std::string why = SkipReason();                                 \
    if (!why.empty()) {                                             \
      if (Required()) FAIL("FCWARM_REQUIRE_CLUSTER=1 but " << why); \
      MESSAGE("SKIP: " << why);                                     \
      std::printf("SKIP: %s\n", why.c_str());                       \
      return;                                                       \
    }                                                               \
  } while (0)

std::unique_ptr<SingleFlight> Node(const CoordinationConfig& cfg, const std::string& id,
                                   EtcdClientOptions client = {}) {
  SingleFlightOptions opts;
  opts.poll_interval = milliseconds(100);
  auto f = SingleFlight::Create(cfg, id, opts, client);
  REQUIRE_MESSAGE(f.ok(), f.status().ToString());
  return std::move(f).value();
}

std::unique_ptr<EtcdClient> Client(const CoordinationConfig& cfg) {
  auto c = EtcdClient::Create(cfg.endpoints);
  REQUIRE(c.ok());
  return std::move(c).value();
}

// Waits until `pred` holds or `timeout` passes; returns pred's last value.
bool Eventually(const std::function<bool()>& pred, milliseconds timeout) {
  const auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return pred();
}

}  // namespace

TEST_CASE("etcd lock: concurrent nodes contend for one key and exactly one acquires") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  constexpr int kNodes = 4;
  std::vector<std::unique_ptr<SingleFlight>> nodes;
  for (int i = 0; i < kNodes; ++i) nodes.push_back(Node(cfg, "node-" + std::to_string(i)));
  std::vector<Result<AcquireResult>> results;
  for (int i = 0; i < kNodes; ++i) results.emplace_back(Status::Internal("not run"));
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kNodes; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      results[i] = nodes[i]->Acquire("sha256-abc", seconds(5));
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  int acquired = 0;
  std::string winner;
  for (int i = 0; i < kNodes; ++i) {
    REQUIRE_MESSAGE(results[i].ok(), results[i].status().ToString());
    if (results[i]->outcome == AcquireOutcome::kAcquired) {
      ++acquired;
      winner = "node-" + std::to_string(i);
      CHECK(results[i]->lock != nullptr);
    }
  }
  REQUIRE(acquired == 1);
  for (int i = 0; i < kNodes; ++i) {
    if (results[i]->outcome == AcquireOutcome::kAcquired) continue;
    CHECK(results[i]->outcome == AcquireOutcome::kBusy);
    CHECK(results[i]->lock == nullptr);
    CHECK(results[i]->holder == winner);
  }
  // The key: <prefix>locks/<name>, the holder's node id, attached to the lock's lease.
  auto client = Client(cfg);
  auto kv = client->Get("/fcwarm/locks/sha256-abc");
  REQUIRE(kv.ok());
  REQUIRE(kv->has_value());
  CHECK((*kv)->value == winner);
  BuildLock* lock = nullptr;
  for (auto& r : results) {
    if (r->lock) lock = r->lock.get();
  }
  CHECK((*kv)->lease == lock->lease_id());
  CHECK(lock->key() == "/fcwarm/locks/sha256-abc");
  CHECK(lock->node_id() == winner);
  CHECK(lock->ttl_s() == 5);
  // Release deletes the key at once; a second Release is a no-op.
  CHECK(lock->Release().ok());
  CHECK(lock->Release().ok());
  kv = client->Get("/fcwarm/locks/sha256-abc");
  REQUIRE(kv.ok());
  CHECK_FALSE(kv->has_value());
  CHECK_FALSE(lock->lost());
  // Another name is independent of this one.
  auto other = nodes[0]->Acquire("sha256-other", seconds(5));
  REQUIRE(other.ok());
  CHECK(other->outcome == AcquireOutcome::kAcquired);
}

TEST_CASE("etcd lock: a waiter acquires right after the holder releases") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  auto a = Node(cfg, "node-a");
  auto b = Node(cfg, "node-b");
  auto held = a->Acquire("key1", seconds(5));
  REQUIRE(held.ok());
  REQUIRE(held->outcome == AcquireOutcome::kAcquired);

  Result<AcquireResult> waited(Status::Internal("not run"));
  std::atomic<int> stop_calls{0};
  std::thread waiter([&] {
    waited = b->AcquireOrWait("key1", seconds(5), Clock::now() + seconds(20), [&] {
      ++stop_calls;
      return false;
    });
  });
  // B is waiting (it polled a few times) while A holds the lock well past a TTL/3 renewal.
  std::this_thread::sleep_for(milliseconds(2500));
  CHECK(stop_calls.load() >= 5);
  CHECK_FALSE(held->lock->lost());
  const auto released = Clock::now();
  CHECK(held->lock->Release().ok());
  waiter.join();
  const long takeover_ms = Ms(Clock::now() - released);
  REQUIRE_MESSAGE(waited.ok(), waited.status().ToString());
  CHECK(waited->outcome == AcquireOutcome::kAcquired);
  CHECK(waited->holder == "node-a");
  CHECK(waited->waited >= milliseconds(2500));
  MESSAGE("takeover after release: " << takeover_ms << " ms");
  CHECK(takeover_ms < 1000);
  auto kv = Client(cfg)->Get(b->LockKey("key1"));
  REQUIRE(kv.ok());
  REQUIRE(kv->has_value());
  CHECK((*kv)->value == "node-b");
  // The destructor releases too.
  waited->lock.reset();
  kv = Client(cfg)->Get(b->LockKey("key1"));
  REQUIRE(kv.ok());
  CHECK_FALSE(kv->has_value());
}

TEST_CASE("etcd lock: a killed holder loses the key after its lease TTL and a waiter takes over") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  ScratchDir scratch("/tmp/fcwarm-coord-holder-XXXXXX");
  const fs::path out = scratch.path() / "holder.out";
  constexpr int kTtl = 2;
  util::SpawnOptions opts;
  opts.argv = {COORD_HOLDER, etcd.Url(), "dying-node", "key-k", std::to_string(kTtl)};
  opts.stdout_path = out.string();
  auto child = util::Spawn(opts);
  REQUIRE_MESSAGE(child.ok(), child.status().ToString());
  int child_pid = child->pid;
  struct Reaper {
    int* pid;
    ~Reaper() {
      if (*pid > 0) util::TerminateAndReap(*pid, milliseconds(0));
    }
  } reaper{&child_pid};
  // Its log lines go to stdout too; its answer is a line of its own.
  REQUIRE_MESSAGE(
      Eventually([&] { return ("\n" + ReadAll(out)).find("\nacquired ") != std::string::npos; }, seconds(10)),
      ReadAll(out));

  auto b = Node(cfg, "node-b");
  auto client = Client(cfg);
  // The holder keeps its lease alive: after three TTLs the key is still its.
  std::this_thread::sleep_for(seconds(3 * kTtl));
  auto busy = b->Acquire("key-k", seconds(kTtl));
  REQUIRE(busy.ok());
  CHECK(busy->outcome == AcquireOutcome::kBusy);
  CHECK(busy->holder == "dying-node");

  // The node dies mid-build (SIGKILL: no release, no more renewals).
  const auto killed = Clock::now();
  REQUIRE(::kill(child->pid, SIGKILL) == 0);
  util::TerminateAndReap(child->pid, milliseconds(0));
  child_pid = -1;
  auto r = b->AcquireOrWait("key-k", seconds(kTtl), killed + seconds(kTtl + 10), {});
  const long takeover_ms = Ms(Clock::now() - killed);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->outcome == AcquireOutcome::kAcquired);
  CHECK(r->holder == "dying-node");
  MESSAGE("takeover after SIGKILL of the holder (lease TTL " << kTtl << " s): " << takeover_ms << " ms");
  // Not before the lease could have expired (renewed at most TTL/3 before the kill), within TTL + slack.
  CHECK(takeover_ms >= kTtl * 1000 * 2 / 3 - 100);
  CHECK(takeover_ms <= kTtl * 1000 + 1500);
  auto kv = client->Get(b->LockKey("key-k"));
  REQUIRE(kv.ok());
  REQUIRE(kv->has_value());
  CHECK((*kv)->value == "node-b");
}

TEST_CASE("etcd lock: a revoked lease or a deleted key is observed as lost") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  auto a = Node(cfg, "node-a");
  auto admin = Client(cfg);

  SUBCASE("lease revoked by someone else") {
    std::atomic<int> calls{0};
    std::string why;
    auto held = a->Acquire("k", seconds(3), [&](const Status& s) {
      why = s.message();
      ++calls;
    });
    REQUIRE(held.ok());
    REQUIRE(held->outcome == AcquireOutcome::kAcquired);
    CHECK(admin->RevokeLease(held->lock->lease_id()).ok());
    // Seen at the next renewal (every TTL/3 = 1 s).
    CHECK(Eventually([&] { return held->lock->lost(); }, milliseconds(2500)));
    CHECK(Eventually([&] { return calls.load() == 1; }, milliseconds(500)));
    CHECK(why.find("expired or was revoked") != std::string::npos);
    CHECK(held->lock->lost_reason().code() == StatusCode::kFailedPrecondition);
    CHECK(held->lock->Release().ok());  // the lease is gone: nothing to revoke, not an error
    CHECK(calls.load() == 1);
  }
  SUBCASE("key deleted") {
    auto held = a->Acquire("k", seconds(3));
    REQUIRE(held.ok());
    REQUIRE(held->outcome == AcquireOutcome::kAcquired);
    auto deleted = admin->Delete(held->lock->key());
    REQUIRE(deleted.ok());
    CHECK(*deleted == 1);
    CHECK(Eventually([&] { return held->lock->lost(); }, milliseconds(2500)));
    CHECK(held->lock->lost_reason().message().find("the key was deleted") != std::string::npos);
  }
  SUBCASE("key replaced by another node") {
    auto held = a->Acquire("k", seconds(3));
    REQUIRE(held.ok());
    REQUIRE(held->outcome == AcquireOutcome::kAcquired);
    REQUIRE(admin->Put(held->lock->key(), "intruder").ok());
    CHECK(Eventually([&] { return held->lock->lost(); }, milliseconds(2500)));
    CHECK(held->lock->lost_reason().message().find("now belongs to node 'intruder'") != std::string::npos);
  }
}

TEST_CASE("etcd lock: renewals failing for a whole TTL mark the lock lost") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  // Short request timeouts so that a stopped etcd is noticed within the TTL.
  auto a = Node(cfg, "node-a", {milliseconds(300), milliseconds(400)});
  auto held = a->Acquire("k", seconds(2));
  REQUIRE(held.ok());
  REQUIRE(held->outcome == AcquireOutcome::kAcquired);
  // etcd stops answering (SIGSTOP: connections are accepted, nothing is answered).
  const auto stopped = Clock::now();
  REQUIRE(::kill(etcd.pid(), SIGSTOP) == 0);
  CHECK(Eventually([&] { return held->lock->lost(); }, seconds(5)));
  const long lost_ms = Ms(Clock::now() - stopped);
  MESSAGE("lost() true " << lost_ms << " ms after etcd stopped answering (TTL 2 s, renewed every 666 ms)");
  // lost() turns true a TTL after the last renewal that succeeded was sent, before etcd could expire it.
  CHECK(lost_ms <= 2000 + 300);  // the poll of this test may be late on a loaded machine
  CHECK(lost_ms >= 2000 - 667 - 100);
  CHECK(held->lock->lost_reason().code() == StatusCode::kUnavailable);
  // The keepalive thread ends with its own reason once its renewal in flight times out.
  CHECK(Eventually(
      [&] {
        return held->lock->lost_reason().message().find(
                   "no renewal of the lease succeeded for its TTL (2 s): etcd /v3/lease/keepalive") !=
               std::string::npos;
      },
      seconds(2)));
  ::kill(etcd.pid(), SIGCONT);
}

TEST_CASE("etcd lock: a lock lost by time stays lost when etcd answers again") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  // A request timeout longer than the TTL: the renewal in flight outlives the TTL, then succeeds.
  auto a = Node(cfg, "node-a", {milliseconds(300), milliseconds(6000)});
  std::atomic<int> calls{0};
  auto held = a->Acquire("k", seconds(2), [&](const Status&) { ++calls; });
  REQUIRE(held.ok());
  REQUIRE(held->outcome == AcquireOutcome::kAcquired);
  REQUIRE(::kill(etcd.pid(), SIGSTOP) == 0);
  CHECK(Eventually([&] { return held->lock->lost(); }, seconds(4)));
  std::this_thread::sleep_for(milliseconds(300));
  ::kill(etcd.pid(), SIGCONT);
  // The renewal in flight is answered now: "expired", or (had etcd processed it in time) a success that
  // comes too late. Either way the lock stays lost and the callback runs once.
  std::this_thread::sleep_for(milliseconds(1500));
  CHECK(held->lock->lost());
  CHECK(Eventually([&] { return calls.load() == 1; }, seconds(5)));
  CHECK_FALSE(held->lock->lost_reason().ok());
  MESSAGE(held->lock->lost_reason().ToString());
  CHECK(held->lock->Release().ok());
  CHECK(held->lock->lost());
  CHECK(calls.load() == 1);
  // Released: the key is gone.
  auto kv = Client(cfg)->Get(held->lock->key());
  REQUIRE(kv.ok());
  CHECK_FALSE(kv->has_value());
}

TEST_CASE("etcd lock: should_stop ends a wait, and so does the deadline") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  const auto cfg = etcd.Config();
  auto a = Node(cfg, "node-a");
  auto b = Node(cfg, "node-b");
  auto held = a->Acquire("k", seconds(5));
  REQUIRE(held.ok());
  REQUIRE(held->outcome == AcquireOutcome::kAcquired);

  SUBCASE("should_stop") {
    int calls = 0;
    auto r = b->AcquireOrWait("k", seconds(5), Clock::now() + seconds(30), [&] { return ++calls == 4; });
    REQUIRE(r.ok());
    CHECK(r->outcome == AcquireOutcome::kStopped);
    CHECK(r->lock == nullptr);
    CHECK(r->holder == "node-a");
    CHECK(calls == 4);
    CHECK(r->waited >= milliseconds(300));  // three polls of 100 ms
    CHECK(r->waited < milliseconds(2000));
    // should_stop true at once: no attempt at all.
    auto now = b->AcquireOrWait("k", seconds(5), Clock::now() + seconds(30), [] { return true; });
    REQUIRE(now.ok());
    CHECK(now->outcome == AcquireOutcome::kStopped);
    CHECK(now->holder.empty());
  }
  SUBCASE("deadline") {
    const auto start = Clock::now();
    auto r = b->AcquireOrWait("k", seconds(5), start + milliseconds(700), {});
    const long ms = Ms(Clock::now() - start);
    REQUIRE(r.ok());
    CHECK(r->outcome == AcquireOutcome::kTimedOut);
    CHECK(r->lock == nullptr);
    CHECK(r->holder == "node-a");
    CHECK(ms >= 700);
    CHECK(ms < 1500);
    // A deadline in the past still makes one attempt.
    auto past = b->AcquireOrWait("k", seconds(5), start, {});
    REQUIRE(past.ok());
    CHECK(past->outcome == AcquireOutcome::kTimedOut);
    CHECK(past->holder == "node-a");
  }
  CHECK_FALSE(held->lock->lost());
  // The holder never noticed the waiters.
  CHECK(AcquireOutcomeName(AcquireOutcome::kTimedOut) == "timed_out");
}

TEST_CASE("etcd client: an unreachable endpoint is Unavailable at once and names the endpoint") {
  auto ports = FreePorts(2);  // nothing listens on them any more
  const std::string url =
      "etcd://127.0.0.1:" + std::to_string(ports[0]) + ",127.0.0.1:" + std::to_string(ports[1]);
  auto cfg = ParseCoordinationUrl(url);
  REQUIRE(cfg.ok());
  auto node = Node(*cfg, "node-a");
  const auto start = Clock::now();
  auto r = node->Acquire("k", seconds(5));
  const long ms = Ms(Clock::now() - start);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kUnavailable);
  const std::string msg = r.status().message();
  MESSAGE(msg);
  CHECK(msg.find("etcd unreachable") != std::string::npos);
  CHECK(msg.find("127.0.0.1:" + std::to_string(ports[0])) != std::string::npos);
  CHECK(msg.find("127.0.0.1:" + std::to_string(ports[1])) != std::string::npos);
  CHECK(msg.find("/fcwarm/locks/k") != std::string::npos);
  CHECK(ms < 1000);
  // A wait ends with the error too, not at its deadline.
  auto w = node->AcquireOrWait("k", seconds(5), Clock::now() + seconds(30), {});
  REQUIRE_FALSE(w.ok());
  CHECK(w.status().code() == StatusCode::kUnavailable);
}

TEST_CASE("etcd client: fails over to the next endpoint and reports the server's errors") {
  SKIP_WITHOUT_ETCD();
  EtcdServer etcd;
  auto dead = FreePorts(1);
  const auto good = etcd.Config();
  auto cfg = ParseCoordinationUrl("etcd://127.0.0.1:" + std::to_string(dead[0]) + "," +
                                  good.endpoints[0].HostPort() + "/other/prefix");
  REQUIRE(cfg.ok());
  auto node = Node(*cfg, "node-a");
  auto r = node->Acquire("k", seconds(5));
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->outcome == AcquireOutcome::kAcquired);
  CHECK(r->lock->key() == "/other/prefix/locks/k");
  // The gateway's error body becomes the status: an unknown lease is NotFound with etcd's message.
  auto client = Client(good);
  Status s = client->RevokeLease(12345);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message().find("requested lease not found") != std::string::npos);
  CHECK(s.message().find("/v3/lease/revoke") != std::string::npos);
  auto ka = client->KeepAliveOnce(12345);
  CHECK(ka.status().code() == StatusCode::kNotFound);
  // Keys and values are binary-safe (base64 on the wire).
  std::string binary("k\0\xff\n", 4);
  REQUIRE(client->Put("/bin/" + binary, binary).ok());
  auto kv = client->Get("/bin/" + binary);
  REQUIRE(kv.ok());
  REQUIRE(kv->has_value());
  CHECK((*kv)->value == binary);
  CHECK((*kv)->key == "/bin/" + binary);
}

TEST_CASE("coordination: bad node ids, lock names and TTLs are refused before any request") {
  auto cfg = ParseCoordinationUrl("etcd://127.0.0.1:9");
  REQUIRE(cfg.ok());
  CHECK(SingleFlight::Create(*cfg, "").status().code() == StatusCode::kInvalidArgument);
  CHECK(SingleFlight::Create(*cfg, "has space").status().message().find("node id 'has space'") !=
        std::string::npos);
  CHECK(SingleFlight::Create(*cfg, "n", SingleFlightOptions{milliseconds(0)}).status().code() ==
        StatusCode::kInvalidArgument);
  auto client = EtcdClient::Create(cfg->endpoints);
  REQUIRE(client.ok());
  CHECK(SingleFlight::Create(std::shared_ptr<EtcdClient>(std::move(client).value()), "no-slash", "n")
            .status()
            .message()
            .find("key prefix 'no-slash'") != std::string::npos);
  CHECK(EtcdClient::Create({}).status().code() == StatusCode::kInvalidArgument);
  auto node = Node(*cfg, "n");
  CHECK(node->Acquire("", seconds(5)).status().code() == StatusCode::kInvalidArgument);
  CHECK(node->Acquire("a b", seconds(5)).status().message().find("lock name 'a b'") != std::string::npos);
  CHECK(node->Acquire(std::string(513, 'x'), seconds(5)).status().code() == StatusCode::kInvalidArgument);
  CHECK(node->Acquire("k", seconds(0)).status().message().find("lease_ttl 0 s is out of range") !=
        std::string::npos);
  CHECK(node->Acquire("k", seconds(3601)).status().code() == StatusCode::kInvalidArgument);
}
