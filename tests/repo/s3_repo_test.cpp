// S3ObjectStore and SnapshotRepository against a real S3 API (Ceph's RADOS Gateway in the cluster tier).
//
// Reads FCWARM_TEST_S3_ENDPOINT, FCWARM_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION
// (optional). run_with_rgw.py starts a one-node Ceph with RGW (tests/support/cluster.py) and sets them; run by
// hand against any S3 endpoint with those variables. Every object is written under a fresh random prefix and
// removed at the end.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "repo/object_store.hpp"
#include "repo/snapshot_repository.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"

using namespace fcwarm;
using namespace fcwarm::repo;
using fcwarm::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool Configured() {
  for (const char* v : {"FCWARM_TEST_S3_ENDPOINT", "FCWARM_TEST_S3_BUCKET", "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY"}) {
    if (Env(v).empty()) {
      MESSAGE("skipped: " << v << " is not set (run through tests/repo/run_with_rgw.py)");
      return false;
    }
  }
  return true;
}

S3Options Options() {
  S3Options o;
  o.endpoint = Env("FCWARM_TEST_S3_ENDPOINT");
  o.bucket = Env("FCWARM_TEST_S3_BUCKET");
  if (!Env("AWS_REGION").empty()) o.region = Env("AWS_REGION");
  auto c = CredentialsFromEnvironment();
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  o.credentials = *c;
  o.connect_timeout = std::chrono::seconds(2);
  o.request_timeout = std::chrono::seconds(30);
  return o;
}

std::shared_ptr<S3ObjectStore> Open(S3Options o) {
  auto s = S3ObjectStore::Create(std::move(o));
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  return std::shared_ptr<S3ObjectStore>(std::move(*s));
}

std::string RandomHex(size_t n) {
  std::random_device rd;
  std::string s;
  while (s.size() < n) s += "0123456789abcdef"[rd() % 16];
  return s;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Removes every object under a prefix at scope exit.
struct Cleanup {
  std::shared_ptr<ObjectStore> store;
  std::string prefix;
  ~Cleanup() {
    auto l = store->List(prefix);
    if (!l.ok()) return;
    for (const auto& o : *l) (void)store->Delete(o.key);
  }
};

// A TCP port on 127.0.0.1 that nothing listens on (bound, then closed).
int DeadPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  socklen_t len = sizeof(a);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

TEST_CASE("s3: put, get, head, list with pagination and delete") {
  if (!Configured()) return;
  S3Options o = Options();
  o.max_keys = 2;  // 7 keys: 4 pages
  auto store = Open(o);
  REQUIRE_MESSAGE(store->Check().ok(), store->Check().ToString());
  const std::string p = "test-" + RandomHex(12) + "/";
  Cleanup cleanup{store, p};
  // Keys with characters that need percent-encoding in the path and in the listing's prefix.
  std::vector<std::string> keys = {p + "a/1", p + "a/2", p + "a/3", p + "b/x+y=z", p + "b/odd:&?#%~'!*()$,;@",
                                   p + "c", p + "d/e/f"};
  for (const auto& k : keys) {
    auto st = store->Put(k, "value of " + k);
    REQUIRE_MESSAGE(st.ok(), k << ": " << st.ToString());
  }
  for (const auto& k : keys) {
    auto v = store->Get(k);
    REQUIRE_MESSAGE(v.ok(), k << ": " << v.status().ToString());
    CHECK(*v == "value of " + k);
  }
  auto h = store->Head(keys[4]);
  REQUIRE_MESSAGE(h.ok(), h.status().ToString());
  CHECK(h->exists);
  CHECK(h->size == ("value of " + keys[4]).size());
  CHECK(!store->Head(p + "absent")->exists);
  auto missing = store->Get(p + "absent");
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(Contains(missing.status().message(), p + "absent"));

  auto all = store->List(p);
  REQUIRE_MESSAGE(all.ok(), all.status().ToString());
  REQUIRE(all->size() == keys.size());
  std::vector<std::string> sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) CHECK((*all)[i].key == sorted[i]);
  CHECK((*all)[0].size > 0);
  CHECK(std::abs((*all)[0].last_modified_ms - util::NowMillis()) < 600'000);
  auto b = store->List(p + "b/");
  REQUIRE(b.ok());
  CHECK(b->size() == 2);
  auto odd = store->List(p + "b/odd:&?");
  REQUIRE_MESSAGE(odd.ok(), odd.status().ToString());
  CHECK(odd->size() == 1);

  // Large-ish bodies, binary, and replacement.
  std::string big = RandomBytes(5 << 20, 1);
  REQUIRE(store->Put(p + "big", big).ok());
  CHECK(*store->Get(p + "big") == big);
  REQUIRE(store->Put(p + "big", "small").ok());
  CHECK(*store->Get(p + "big") == "small");
  REQUIRE(store->Put(p + "empty", "").ok());
  CHECK(store->Get(p + "empty")->empty());

  REQUIRE(store->Delete(keys[0]).ok());
  CHECK(store->Delete(keys[0]).ok());  // idempotent
  CHECK(!store->Head(keys[0])->exists);
  CHECK(store->List(p + "a/")->size() == 2);

  // Many threads share the store (a curl handle per request from the pool).
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        std::string k = p + "par/" + std::to_string(t) + "-" + std::to_string(i);
        if (!store->Put(k, k).ok()) ++failures;
        auto v = store->Get(k);
        if (!v.ok() || *v != k) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(store->List(p + "par/")->size() == 80);
}

TEST_CASE("s3: wrong credentials, a missing bucket and a dead endpoint say so") {
  if (!Configured()) return;
  S3Options o = Options();
  o.credentials.secret_access_key += "x";
  auto bad_secret = Open(o);
  Status st = bad_secret->Check();
  CHECK(st.code() == kPermissionDenied);
  CHECK(Contains(st.message(), "permission denied"));
  CHECK(Contains(st.message(), "SignatureDoesNotMatch"));
  CHECK(Contains(st.message(), o.bucket));
  CHECK(Contains(st.message(), "AWS_SECRET_ACCESS_KEY"));
  auto put = bad_secret->Put("test-denied", "x");
  CHECK(put.code() == kPermissionDenied);
  CHECK(Contains(put.message(), "SignatureDoesNotMatch"));
  // Head has no error body: still refused, with the bucket named.
  auto head = bad_secret->Head("test-denied");
  CHECK(head.status().code() == kPermissionDenied);
  CHECK(Contains(head.status().message(), o.bucket));

  o = Options();
  o.credentials.access_key_id = "NOSUCHKEY" + RandomHex(8);
  st = Open(o)->Check();
  CHECK(st.code() == kPermissionDenied);
  CHECK(Contains(st.message(), "InvalidAccessKeyId"));
  CHECK(Contains(st.message(), "AWS_ACCESS_KEY_ID"));

  o = Options();
  o.bucket = "no-such-bucket-" + RandomHex(8);
  auto nb = Open(o);
  st = nb->Check();
  CHECK(st.code() == StatusCode::kNotFound);
  CHECK(Contains(st.message(), "bucket " + o.bucket + " does not exist"));
  CHECK(nb->Put("k", "v").code() == StatusCode::kNotFound);
  CHECK(nb->Get("k").status().code() == StatusCode::kNotFound);

  o = Options();
  o.endpoint = "http://127.0.0.1:" + std::to_string(DeadPort());
  auto dead = Open(o);
  auto start = std::chrono::steady_clock::now();
  st = dead->Check();
  CHECK(st.code() == StatusCode::kUnavailable);
  CHECK(Contains(st.message(), o.endpoint));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
}

TEST_CASE("s3: a generation publishes, de-duplicates, fetches, detects a bad chunk and is collected") {
  if (!Configured()) return;
  auto store = Open(Options());
  const std::string prefix = "test-" + RandomHex(12);
  Cleanup cleanup{store, prefix + "/"};
  RepositoryOptions ro;
  ro.chunk_size = 256 * 1024;
  ro.workers = 4;
  ro.node = "node-a";
  auto r = SnapshotRepository::Create(store, prefix, ro);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  auto& repo = **r;

  TempDir tmp;
  fs::path gen = tmp.path() / "gen";
  fs::create_directories(gen);
  {
    // 4 MiB memory: random, zero and compressible (text) chunks; a small disk file.
    std::string mem(4 << 20, '\0');
    std::string rnd = RandomBytes(1 << 20, 5);
    mem.replace(0, rnd.size(), rnd);
    for (size_t i = 2 << 20; i < (3 << 20); ++i) mem[i] = "fcwarm snapshot "[i % 16];
    fcwarm::testing::WriteFile(gen / "memory", mem);
    fcwarm::testing::WriteFile(gen / "disk", RandomBytes(100000, 6));
  }
  PublishRequest req;
  req.dir = gen;
  req.repo_key = "compat-1";
  req.metadata_json = R"({"images":["sha256:0123"]})";
  for (const char* n : {"memory", "disk"}) {
    SnapshotFile f;
    f.name = n;
    f.size = fs::file_size(gen / n);
    f.xxh3 = *util::Xxh3File(gen / n);
    req.files.push_back(f);
  }
  auto pub = repo.Publish(req);
  REQUIRE_MESSAGE(pub.ok(), pub.status().ToString());
  CHECK(pub->stats.hole_chunks == 8);                  // memory's last 2 MiB
  CHECK(pub->stats.uploaded_chunks == 4 + 1 + 1);      // random 4, text 1 (4 identical chunks), disk 1
  CHECK(pub->stats.present_chunks == 3);
  CHECK(pub->stats.uploaded_bytes < pub->stats.uploaded_raw_bytes);
  MESSAGE("publish: raw " << pub->stats.raw_bytes << " zero " << pub->stats.zero_bytes << " stored "
                          << pub->stats.uploaded_bytes << " in " << pub->stats.ms << " ms");

  auto again = repo.Publish(req);
  REQUIRE(again.ok());
  CHECK(again->stats.uploaded_chunks == 0);

  auto latest = repo.FindLatest("compat-1");
  REQUIRE_MESSAGE(latest.ok(), latest.status().ToString());
  CHECK(latest->generation == again->manifest.generation);
  auto fetched = repo.Fetch(*latest, tmp.path() / "out");
  REQUIRE_MESSAGE(fetched.ok(), fetched.status().ToString());
  CHECK(fetched->downloaded_chunks == 9);
  for (const char* n : {"memory", "disk"}) {
    CHECK(*util::Xxh3File(tmp.path() / "out" / n) == *util::Xxh3File(gen / n));
  }

  // A chunk replaced by garbage in the bucket: DataLoss naming it, nothing left behind.
  const std::string digest = latest->files[1].chunks[0].digest;
  REQUIRE(store->Put(repo.ChunkKey(digest), "garbage").ok());
  auto bad = repo.Fetch(*latest, tmp.path() / "out2");
  CHECK(bad.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(bad.status().message(), "file 'disk' chunk 0 (digest " + digest + ")"));
  CHECK(!fs::exists(tmp.path() / "out2"));

  // GC: keep one per key, nothing young; the older generation goes, chunks stay (the newer uses them all).
  GcOptions g;
  g.keep_newest = 1;
  g.keep_newer_than = std::chrono::milliseconds(0);
  g.min_chunk_age = std::chrono::milliseconds(0);
  auto rep = repo.Gc(g);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK(rep->manifests_deleted.size() == 1);
  CHECK(rep->chunks_deleted == 0);
  REQUIRE(store->Put(repo.ChunkKey(std::string(32, 'e')), "unreferenced").ok());
  rep = repo.Gc(g);
  REQUIRE(rep.ok());
  CHECK(rep->chunks_deleted == 1);
  CHECK(repo.ListGenerations()->size() == 1);
}
