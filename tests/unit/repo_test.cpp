// The snapshot repository (src/repo/): DirObjectStore, URL parsing, credentials, and SnapshotRepository's publish,
// fetch, verification, de-duplication, ordering and GC over a directory store.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "repo/object_store.hpp"
#include "repo/snapshot_repository.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"

using namespace fcwarm;
using namespace fcwarm::repo;
using fcwarm::testing::TempDir;
using fcwarm::testing::WriteFile;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kChunk = 64 * 1024;  // the smallest chunk size: small test files still have many chunks

// A store that forwards to another and records every call in order; a test may make calls fail.
class RecordingStore : public ObjectStore {
 public:
  explicit RecordingStore(std::shared_ptr<ObjectStore> inner) : inner_(std::move(inner)) {}
  Status Put(const std::string& key, std::string_view bytes) override {
    if (auto st = Note("put", key); !st.ok()) return st;
    return inner_->Put(key, bytes);
  }
  Result<std::string> Get(const std::string& key) override {
    if (auto st = Note("get", key); !st.ok()) return st;
    return inner_->Get(key);
  }
  Result<ObjectHead> Head(const std::string& key) override {
    if (auto st = Note("head", key); !st.ok()) return st;
    return inner_->Head(key);
  }
  Result<std::vector<ObjectInfo>> List(const std::string& prefix) override {
    if (auto st = Note("list", prefix); !st.ok()) return st;
    return inner_->List(prefix);
  }
  Status Delete(const std::string& key) override {
    if (auto st = Note("delete", key); !st.ok()) return st;
    return inner_->Delete(key);
  }
  Status Check() override { return inner_->Check(); }
  std::string Describe() const override { return "recording " + inner_->Describe(); }

  std::vector<std::pair<std::string, std::string>> Calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  void Clear() {
    std::lock_guard lock(mu_);
    calls_.clear();
  }
  // Fails calls for which `pred(op, key)` is true.
  void FailWhen(std::function<bool(const std::string&, const std::string&)> pred) {
    std::lock_guard lock(mu_);
    fail_ = std::move(pred);
  }

 private:
  Status Note(const std::string& op, const std::string& key) {
    std::lock_guard lock(mu_);
    calls_.emplace_back(op, key);
    if (fail_ && fail_(op, key)) return Status::Unavailable("injected failure of " + op + " " + key);
    return Status::Ok();
  }
  std::shared_ptr<ObjectStore> inner_;
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> calls_;
  std::function<bool(const std::string&, const std::string&)> fail_;
};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

void WriteAt(const fs::path& path, uint64_t off, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)) == static_cast<ssize_t>(data.size()));
  ::close(fd);
}

void Truncate(const fs::path& path, uint64_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  ::close(fd);
}

std::string Slurp(const fs::path& path) {
  auto r = util::ReadFile(path, 1u << 30);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return *r;
}

uint64_t Allocated(const fs::path& path) {
  struct stat sb;
  REQUIRE(::stat(path.c_str(), &sb) == 0);
  return static_cast<uint64_t>(sb.st_blocks) * 512;
}

// A generation directory like a memory snapshot: "memory" with random chunks, an all-zero chunk (a hole), a chunk
// that is half zero pages, and a short random tail; "disk" with random data; "empty" of 0 bytes.
struct Generation {
  fs::path dir;
  std::vector<SnapshotFile> files;
};

std::vector<SnapshotFile> Describe(const fs::path& dir, const std::vector<std::string>& names) {
  std::vector<SnapshotFile> files;
  for (const auto& n : names) {
    SnapshotFile f;
    f.name = n;
    f.size = fs::file_size(dir / n);
    auto d = util::Xxh3File(dir / n);
    REQUIRE(d.ok());
    f.xxh3 = *d;
    files.push_back(f);
  }
  return files;
}

Generation MakeGeneration(const fs::path& dir, uint32_t seed) {
  fs::create_directories(dir);
  fs::path mem = dir / "memory";
  Truncate(mem, 5 * kChunk + 1000);
  WriteAt(mem, 0, RandomBytes(kChunk, seed));                        // chunk 0: random
  // chunk 1: all zero (hole)
  WriteAt(mem, 2 * kChunk, RandomBytes(kChunk / 2, seed + 1));       // chunk 2: first half random, rest zero pages
  WriteAt(mem, 3 * kChunk, RandomBytes(kChunk, seed));               // chunk 3: same bytes as chunk 0 (repeat)
  // chunk 4: zero; chunk 5: 1000-byte tail
  WriteAt(mem, 5 * kChunk, RandomBytes(1000, seed + 2));
  WriteAt(dir / "disk", 0, RandomBytes(3 * kChunk / 2, seed + 3));
  Truncate(dir / "empty", 0);
  return {dir, Describe(dir, {"memory", "disk", "empty"})};
}

std::shared_ptr<DirObjectStore> OpenDir(const fs::path& root) {
  auto s = DirObjectStore::Open(root);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  return std::shared_ptr<DirObjectStore>(std::move(*s));
}

std::unique_ptr<SnapshotRepository> MakeRepo(std::shared_ptr<ObjectStore> store, std::string prefix = "snaps",
                                             std::function<int64_t()> clock = {}, unsigned workers = 3) {
  RepositoryOptions o;
  o.chunk_size = kChunk;
  o.workers = workers;
  o.node = "node-a";
  o.clock = std::move(clock);
  auto r = SnapshotRepository::Create(std::move(store), std::move(prefix), o);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return std::move(*r);
}

PublishResult MustPublish(SnapshotRepository& repo, const Generation& g, const std::string& key = "key1") {
  PublishRequest req;
  req.dir = g.dir;
  req.files = g.files;
  req.repo_key = key;
  req.metadata_json = R"({"images":["sha256:abc"],"vm":{"memory_mib":128}})";
  auto r = repo.Publish(req);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return std::move(*r);
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("repo: a published generation fetches back byte for byte with its holes") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 7);
  auto repo = MakeRepo(OpenDir(tmp.path() / "repo"));
  auto pub = MustPublish(*repo, g);
  const auto& st = pub.stats;
  CHECK(st.raw_bytes == 5 * kChunk + 1000 + 3 * kChunk / 2);
  CHECK(st.chunks == 6 + 2);
  CHECK(st.hole_chunks == 2);
  CHECK(st.zero_bytes == 2 * kChunk);
  CHECK(st.uploaded_chunks == 5);  // memory 0, 2, 5 and disk 0, 1; memory 3 repeats chunk 0
  CHECK(st.present_chunks == 1);
  CHECK(st.uploaded_bytes > 0);
  CHECK(st.uploaded_bytes < st.uploaded_raw_bytes + 5 * 64);  // random data barely compresses, zeros do
  CHECK(pub.manifest_key == "snaps/manifests/key1/" + pub.manifest.generation + ".json");
  REQUIRE(pub.manifest.files.size() == 3);
  CHECK(pub.manifest.files[0].chunks[1].hole());
  CHECK(pub.manifest.files[0].chunks[3].digest == pub.manifest.files[0].chunks[0].digest);
  CHECK(pub.manifest.files[2].chunks.empty());
  CHECK(Contains(pub.manifest.metadata_json, "sha256:abc"));

  auto latest = repo->FindLatest("key1");
  REQUIRE_MESSAGE(latest.ok(), latest.status().ToString());
  CHECK(latest->generation == pub.manifest.generation);
  CHECK(latest->node == "node-a");
  CHECK(latest->files[0].xxh3 == g.files[0].xxh3);
  CHECK(ManifestToJson(*latest) == ManifestToJson(pub.manifest));

  fs::path out = tmp.path() / "out";
  auto fetched = repo->Fetch(*latest, out);
  REQUIRE_MESSAGE(fetched.ok(), fetched.status().ToString());
  CHECK(fetched->raw_bytes == st.raw_bytes);
  CHECK(fetched->zero_bytes == 2 * kChunk);
  CHECK(fetched->downloaded_chunks == 6);  // chunk 0's content twice
  for (const char* name : {"memory", "disk", "empty"}) {
    CAPTURE(name);
    CHECK(Slurp(out / name) == Slurp(g.dir / name));
  }
  // Holes stay holes: two zero chunks and half of chunk 2 are not allocated.
  CHECK(Allocated(out / "memory") <= fs::file_size(out / "memory") - 2 * kChunk - kChunk / 2 + 4096);
  // A second fetch into the same directory refuses to overwrite.
  auto again = repo->Fetch(*latest, out);
  CHECK(again.status().code() == StatusCode::kAlreadyExists);
  CHECK(Slurp(out / "memory") == Slurp(g.dir / "memory"));
}

TEST_CASE("repo: a second publish uploads nothing new and a changed chunk uploads one chunk") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 11);
  auto repo = MakeRepo(OpenDir(tmp.path() / "repo"));
  auto first = MustPublish(*repo, g);
  auto second = MustPublish(*repo, g);
  CHECK(second.manifest.generation != first.manifest.generation);
  CHECK(second.stats.uploaded_chunks == 0);
  CHECK(second.stats.uploaded_bytes == 0);
  CHECK(second.stats.present_chunks == 6);
  CHECK(second.stats.present_bytes == first.stats.uploaded_bytes);

  // Another node publishing under another key shares the chunks too.
  WriteAt(g.dir / "disk", 10, "changed");
  g.files = Describe(g.dir, {"memory", "disk", "empty"});
  auto third = MustPublish(*repo, g, "key2");
  CHECK(third.stats.uploaded_chunks == 1);
  CHECK(third.stats.present_chunks == 5);
  auto gens = repo->ListGenerations();
  REQUIRE(gens.ok());
  CHECK(gens->size() == 3);
  CHECK((*gens)[0].ref.repo_key == "key1");
  CHECK((*gens)[2].ref.repo_key == "key2");
  auto latest = repo->FindLatest("key1");
  REQUIRE(latest.ok());
  CHECK(latest->generation == second.manifest.generation);  // ids sort by time
}

TEST_CASE("repo: a flipped byte in a stored chunk is DataLoss naming the chunk and leaves no output") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 21);
  auto store = OpenDir(tmp.path() / "repo");
  auto repo = MakeRepo(store);
  auto pub = MustPublish(*repo, g);
  const std::string digest = pub.manifest.files[1].chunks[1].digest;  // disk, chunk 1
  fs::path chunk = store->PathOf(repo->ChunkKey(digest));
  std::string bytes = Slurp(chunk);
  bytes[bytes.size() / 2] ^= 0x40;
  WriteAt(chunk, 0, bytes);

  fs::path out = tmp.path() / "out";
  auto r = repo->Fetch(pub.manifest, out);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(r.status().message(), "file 'disk' chunk 1"));
  CHECK(Contains(r.status().message(), digest));
  CHECK(!fs::exists(out));

  // A valid zstd frame of other content under the digest: decompresses, does not hash to it.
  const std::string other = pub.manifest.files[0].chunks[0].digest;  // a full chunk like disk's chunk 0
  const std::string victim = pub.manifest.files[1].chunks[0].digest;
  fs::copy_file(store->PathOf(repo->ChunkKey(other)), store->PathOf(repo->ChunkKey(victim)),
                fs::copy_options::overwrite_existing);
  fs::create_directories(out);
  WriteFile(out / "unrelated", "kept");
  r = repo->Fetch(pub.manifest, out);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(r.status().message(), "file 'disk' chunk"));
  CHECK(Contains(r.status().message(), "hashes to"));
  // The directory existed: it stays, with what it held, and without the partial files.
  CHECK(fs::exists(out / "unrelated"));
  CHECK(!fs::exists(out / "memory"));
  CHECK(!fs::exists(out / "disk"));
}

TEST_CASE("repo: a missing chunk is DataLoss and a tampered whole file is caught") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 31);
  auto store = OpenDir(tmp.path() / "repo");
  auto repo = MakeRepo(store);
  auto pub = MustPublish(*repo, g);
  const std::string digest = pub.manifest.files[0].chunks[5].digest;  // memory's tail
  REQUIRE(store->Delete(repo->ChunkKey(digest)).ok());
  auto r = repo->Fetch(pub.manifest, tmp.path() / "out");
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(r.status().message(), "file 'memory' chunk 5 (digest " + digest + ") is missing"));
  CHECK(!fs::exists(tmp.path() / "out"));

  // Chunks all fine, but the manifest's file digest is wrong (a manifest edited by hand).
  auto pub2 = MustPublish(*repo, g);  // uploads the tail again
  Manifest m = pub2.manifest;
  m.files[1].xxh3 = std::string(32, '0');
  r = repo->Fetch(m, tmp.path() / "out");
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(r.status().message(), "file 'disk' hashes to"));
  CHECK(!fs::exists(tmp.path() / "out"));
}

TEST_CASE("repo: the manifest is written after every chunk and never when a chunk fails") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 41);
  auto rec = std::make_shared<RecordingStore>(OpenDir(tmp.path() / "repo"));
  auto repo = MakeRepo(rec, "p");
  auto pub = MustPublish(*repo, g);
  auto calls = rec->Calls();
  REQUIRE(!calls.empty());
  CHECK(calls.back().first == "put");
  CHECK(calls.back().second == pub.manifest_key);
  int manifest_puts = 0, chunk_puts = 0;
  for (const auto& [op, key] : calls) {
    if (key.rfind("p/manifests/", 0) == 0) ++manifest_puts;
    if (op == "put" && key.rfind("p/chunks/", 0) == 0) ++chunk_puts;
  }
  CHECK(manifest_puts == 1);
  CHECK(chunk_puts == 5);

  // One chunk upload fails: Publish fails and no manifest exists.
  auto g2 = MakeGeneration(tmp.path() / "gen2", 42);
  rec->Clear();
  int seen = 0;
  rec->FailWhen([&](const std::string& op, const std::string& key) {
    return op == "put" && key.rfind("p/chunks/", 0) == 0 && ++seen == 3;
  });
  PublishRequest req{g2.dir, g2.files, "key-fail", "{}"};
  auto r = repo->Publish(req);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kUnavailable);
  CHECK(Contains(r.status().message(), "injected failure"));
  for (const auto& [op, key] : rec->Calls()) CHECK(key.rfind("p/manifests/", 0) != 0);
  CHECK(repo->FindLatest("key-fail").status().code() == StatusCode::kNotFound);
  rec->FailWhen({});

  // A file that changed since its manifest was written: FailedPrecondition, no manifest.
  WriteAt(g2.dir / "memory", 5, "x");
  r = repo->Publish(req);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kFailedPrecondition);
  CHECK(Contains(r.status().message(), "memory"));
  CHECK(Contains(r.status().message(), "changed"));
  CHECK(repo->FindLatest("key-fail").status().code() == StatusCode::kNotFound);
  // A file whose size changed.
  WriteAt(g2.dir / "disk", fs::file_size(g2.dir / "disk"), "more");
  req.files = Describe(g2.dir, {"memory"});
  req.files.push_back(g2.files[1]);
  r = repo->Publish(req);
  CHECK(r.status().code() == StatusCode::kFailedPrecondition);
  CHECK(repo->FindLatest("key-fail").status().code() == StatusCode::kNotFound);
}

TEST_CASE("repo: publish refuses bad requests") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 51);
  auto repo = MakeRepo(OpenDir(tmp.path() / "repo"));
  auto code = [&](PublishRequest req) { return repo->Publish(req).status().code(); };
  CHECK(code({g.dir, g.files, "", "{}"}) == StatusCode::kInvalidArgument);
  CHECK(code({g.dir, g.files, "a/b", "{}"}) == StatusCode::kInvalidArgument);
  CHECK(code({g.dir, g.files, "../x", "{}"}) == StatusCode::kInvalidArgument);
  CHECK(code({g.dir, {}, "k", "{}"}) == StatusCode::kInvalidArgument);
  CHECK(code({g.dir, g.files, "k", "[1]"}) == StatusCode::kInvalidArgument);
  CHECK(code({g.dir, g.files, "k", "{"}) == StatusCode::kInvalidArgument);
  auto files = g.files;
  files[0].name = "../memory";
  CHECK(code({g.dir, files, "k", "{}"}) == StatusCode::kInvalidArgument);
  files = g.files;
  files.push_back(g.files[0]);
  CHECK(code({g.dir, files, "k", "{}"}) == StatusCode::kInvalidArgument);
  files = g.files;
  files[0].name = "absent";
  CHECK(code({g.dir, files, "k", "{}"}) == StatusCode::kFailedPrecondition);
  // sha256:... digests are fine in a key.
  CHECK(code({g.dir, g.files, "compat.0123:sha256-ab", "{}"}) == StatusCode::kOk);
  CHECK(repo->ListGenerations()->size() == 1);

  RepositoryOptions o;
  o.node = "n";
  auto store = OpenDir(tmp.path() / "r2");
  o.chunk_size = 1000;
  CHECK(SnapshotRepository::Create(store, "", o).status().code() == StatusCode::kInvalidArgument);
  o.chunk_size = 4u << 20;
  o.zstd_level = 0;
  CHECK(SnapshotRepository::Create(store, "", o).status().code() == StatusCode::kInvalidArgument);
  o.zstd_level = 3;
  o.workers = 0;
  CHECK(SnapshotRepository::Create(store, "", o).status().code() == StatusCode::kInvalidArgument);
  o.workers = 2;
  o.node = "";
  CHECK(SnapshotRepository::Create(store, "", o).status().code() == StatusCode::kInvalidArgument);
  o.node = "n/x";
  CHECK(SnapshotRepository::Create(store, "", o).status().code() == StatusCode::kInvalidArgument);
  o.node = "n";
  CHECK(SnapshotRepository::Create(store, "/abs", o).status().code() == StatusCode::kInvalidArgument);
  CHECK(SnapshotRepository::Create(store, "a/../b", o).status().code() == StatusCode::kInvalidArgument);
  CHECK(SnapshotRepository::Create(store, "a/b", o).ok());
}

TEST_CASE("repo: manifests are parsed strictly and a corrupt newest manifest is DataLoss") {
  TempDir tmp;
  auto g = MakeGeneration(tmp.path() / "gen", 61);
  auto store = OpenDir(tmp.path() / "repo");
  auto repo = MakeRepo(store, "");
  auto pub = MustPublish(*repo, g);
  std::string text = ManifestToJson(pub.manifest);
  CHECK(ManifestFromJson(text, "m").ok());
  auto bad = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    size_t at = t.find(from);
    REQUIRE(at != std::string::npos);
    t.replace(at, from.size(), to);
    auto r = ManifestFromJson(t, "m");
    CHECK(r.status().code() == StatusCode::kDataLoss);
    return r.status().message();
  };
  CHECK(Contains(bad("\"name\":\"memory\"", "\"name\":\"../../etc/passwd\""), "files[0].name"));
  CHECK(Contains(bad("\"version\":1", "\"version\":2"), "version 2"));
  CHECK(Contains(bad("\"compression\":\"zstd\"", "\"compression\":\"gzip\""), "compression"));
  CHECK(Contains(bad("{\"hole\":true}", "{\"hole\":false}"), "chunks[1]"));
  CHECK(Contains(bad(pub.manifest.files[0].chunks[0].digest, "zz"), "digest"));
  CHECK(Contains(bad("\"chunk_size\":65536", "\"chunk_size\":131072"), "entries"));
  CHECK(ManifestFromJson("not json", "m").status().code() == StatusCode::kDataLoss);
  CHECK(ManifestFromJson("[]", "m").status().code() == StatusCode::kDataLoss);

  // Fetch refuses a manifest whose names or digests could escape.
  Manifest m = pub.manifest;
  m.files[0].name = "../escape";
  CHECK(repo->Fetch(m, tmp.path() / "out").status().code() == StatusCode::kInvalidArgument);
  m = pub.manifest;
  m.files[0].chunks[0].digest = "../../../../etc/passwd";
  CHECK(repo->Fetch(m, tmp.path() / "out").status().code() == StatusCode::kInvalidArgument);
  CHECK(!fs::exists(tmp.path() / "escape"));

  // A newer manifest that is corrupt: FindLatest says so (the caller builds instead).
  REQUIRE(store->Put("manifests/key1/29990101T000000000Z-00000000.json", "{\"truncated").ok());
  auto latest = repo->FindLatest("key1");
  CHECK(latest.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(latest.status().message(), "29990101T000000000Z-00000000"));
  // A manifest moved under another key is refused.
  REQUIRE(store->Put("manifests/key9/" + pub.manifest.generation + ".json", text).ok());
  CHECK(repo->Load({"key9", pub.manifest.generation}).status().code() == StatusCode::kDataLoss);
  CHECK(repo->FindLatest("nothing").status().code() == StatusCode::kNotFound);
}

TEST_CASE("repo: gc keeps the newest, the young and what nodes use, then removes unreferenced chunks") {
  TempDir tmp;
  const int64_t hour = 3'600'000;
  const int64_t real_now = util::NowMillis();
  // Manifests and node records take the injected clock; chunk ages come from the files' real mtimes.
  int64_t now = real_now - 60 * hour;
  auto store = OpenDir(tmp.path() / "repo");
  auto repo = MakeRepo(store, "p", [&] { return now; });
  std::vector<PublishResult> pubs;
  for (int i = 0; i < 4; ++i) {  // 60, 50, 40 and 30 hours old; no chunk shared
    pubs.push_back(MustPublish(*repo, MakeGeneration(tmp.path() / ("gen" + std::to_string(i)), 100 + 10 * i)));
    now += 10 * hour;
  }
  auto other = MustPublish(*repo, MakeGeneration(tmp.path() / "other", 200), "key2");  // 20 hours old
  now = real_now + 1000;
  REQUIRE(repo->RecordNodeUse("node-b", {{"key1", pubs[0].manifest.generation}}).ok());
  auto chunk_count = [&] { return store->List("p/chunks/")->size(); };
  size_t chunks_before = chunk_count();
  CHECK(chunks_before == 5 * 5);

  GcOptions opt;
  opt.keep_newest = 1;                            // pubs[3] and other
  opt.keep_newer_than = std::chrono::hours(25);   // other
  opt.min_chunk_age = std::chrono::milliseconds(0);
  opt.dry_run = true;                             // pubs[0]: node-b uses it
  auto dry = repo->Gc(opt);
  REQUIRE_MESSAGE(dry.ok(), dry.status().ToString());
  CHECK(dry->dry_run);
  CHECK(dry->manifests_deleted.size() == 2);  // pubs[1] and pubs[2]
  CHECK(dry->manifests_kept.size() == 3);
  CHECK(dry->chunks_deleted == 10);
  CHECK(dry->nodes_live == std::vector<std::string>{"node-b"});
  CHECK(chunk_count() == chunks_before);
  CHECK(repo->ListGenerations()->size() == 5);

  opt.dry_run = false;
  auto rep = repo->Gc(opt);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  std::set<std::string> deleted;
  for (const auto& r : rep->manifests_deleted) deleted.insert(r.generation);
  CHECK(deleted == std::set<std::string>{pubs[1].manifest.generation, pubs[2].manifest.generation});
  CHECK(rep->chunks_deleted == 10);
  CHECK(rep->chunk_bytes_deleted > 0);
  CHECK(chunk_count() == chunks_before - 10);
  auto gens = repo->ListGenerations();
  REQUIRE(gens.ok());
  CHECK(gens->size() == 3);
  // What is left still fetches: the node's old generation, the newest, the other key.
  for (const auto* p : {&pubs[0], &pubs[3], &other}) {
    fs::path out = tmp.path() / ("out-" + p->manifest.generation);
    auto f = repo->Fetch(p->manifest, out);
    CHECK_MESSAGE(f.ok(), f.status().ToString());
  }

  // The node record goes stale: pubs[0] is no longer in use and goes; a young unreferenced chunk stays.
  now += 8 * 24 * hour;
  REQUIRE(store->Put("p/chunks/ff/ffffffffffffffffffffffffffffffff", "orphan").ok());
  opt.keep_newer_than = std::chrono::milliseconds(0);
  opt.min_chunk_age = std::chrono::hours(24 * 30);
  rep = repo->Gc(opt);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK(rep->nodes_stale == std::vector<std::string>{"node-b"});
  CHECK(rep->manifests_deleted.size() == 1);
  CHECK(rep->manifests_deleted[0].generation == pubs[0].manifest.generation);
  CHECK(rep->chunks_deleted == 0);  // every chunk is younger than 30 days
  CHECK(rep->chunks_young == 6);     // pubs[0]'s five and the orphan
  opt.min_chunk_age = std::chrono::milliseconds(0);
  rep = repo->Gc(opt);
  REQUIRE(rep.ok());
  CHECK(rep->chunks_deleted == 6);
  CHECK(chunk_count() == 10);

  // An unreadable node record stops GC before it deletes anything.
  REQUIRE(store->Put("p/nodes/node-c.json", "garbage").ok());
  rep = repo->Gc(opt);
  CHECK(rep.status().code() == StatusCode::kDataLoss);
  CHECK(Contains(rep.status().message(), "p/nodes/node-c.json"));
  REQUIRE(repo->ForgetNode("node-c").ok());
  CHECK(repo->Gc(opt).ok());
  CHECK(repo->RecordNodeUse("../x", {}).code() == StatusCode::kInvalidArgument);
  CHECK(repo->RecordNodeUse("n", {{"k/../x", "g"}}).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("repo: gc deletes corrupt manifests unless a node uses them") {
  TempDir tmp;
  auto store = OpenDir(tmp.path() / "repo");
  auto repo = MakeRepo(store, "");
  MustPublish(*repo, MakeGeneration(tmp.path() / "gen", 300), "key1");
  REQUIRE(store->Put("manifests/key1/20000101T000000000Z-00000001.json", "nope").ok());
  REQUIRE(store->Put("manifests/key1/20000101T000000000Z-00000002.json", "nope").ok());
  REQUIRE(store->Put("manifests/key1/odd+name.json", "{}").ok());  // not an id Publish writes
  REQUIRE(repo->RecordNodeUse("node-b", {{"key1", "20000101T000000000Z-00000002"}}).ok());
  GcOptions opt;
  opt.min_chunk_age = std::chrono::milliseconds(0);
  auto rep = repo->Gc(opt);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK(rep->corrupt_manifests.size() == 3);
  REQUIRE(rep->manifests_deleted.size() == 2);
  CHECK(rep->manifests_deleted[0].generation == "odd+name");
  CHECK(rep->manifests_deleted[1].generation == "20000101T000000000Z-00000001");
  CHECK(rep->chunks_deleted == 0);
  CHECK(repo->ListGenerations()->size() == 2);
}

TEST_CASE("repo: object keys are validated against path tricks") {
  for (const char* bad : {"", "/abs", "a//b", "a/", "../x", "a/../../x", "a/./b", ".", "..", "a\\b", "a b",
                          "a/b.fcwarm-tmp.1.2", "tab\tkey"}) {
    CAPTURE(bad);
    CHECK(ValidateKey(bad).code() == StatusCode::kInvalidArgument);
  }
  for (const char* good : {"a", "a/b/c", "chunks/ab/abcdef", "x.json", "..a", "a..", "k:sha256"}) {
    CAPTURE(good);
    CHECK(ValidateKey(good).ok());
  }
  CHECK(ValidateKey(std::string(1025, 'a')).code() == StatusCode::kInvalidArgument);

  TempDir tmp;
  auto store = OpenDir(tmp.path() / "root");
  CHECK(store->Put("../outside", "x").code() == StatusCode::kInvalidArgument);
  CHECK(store->Put("a/../../outside", "x").code() == StatusCode::kInvalidArgument);
  CHECK(store->Get("/etc/passwd").status().code() == StatusCode::kInvalidArgument);
  CHECK(store->Delete("../root").code() == StatusCode::kInvalidArgument);
  CHECK(store->List("../").status().code() == StatusCode::kInvalidArgument);
  CHECK(!fs::exists(tmp.path() / "outside"));
  CHECK(DirObjectStore::Open("relative/dir").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("repo: the directory store puts atomically, lists by prefix and deletes idempotently") {
  TempDir tmp;
  auto store = OpenDir(tmp.path() / "root");
  CHECK(store->Check().ok());
  REQUIRE(store->Put("a/b/one", "1").ok());
  REQUIRE(store->Put("a/b/two", "22").ok());
  REQUIRE(store->Put("a/c", "333").ok());
  REQUIRE(store->Put("ab", "4444").ok());
  REQUIRE(store->Put("a/b/one", "one").ok());  // replaced
  CHECK(*store->Get("a/b/one") == "one");
  CHECK(store->Get("a/b/none").status().code() == StatusCode::kNotFound);
  CHECK(Contains(store->Get("a/b/none").status().message(), "a/b/none"));
  CHECK(store->Get("a/b").status().code() == StatusCode::kNotFound);  // a directory is no object
  CHECK(store->Head("a/c")->exists);
  CHECK(store->Head("a/c")->size == 3);
  CHECK(!store->Head("a/zz")->exists);
  CHECK(!store->Head("a/c/under-a-file")->exists);
  // A crashed writer's temporary file is not an object.
  WriteFile(tmp.path() / "root" / "a" / "b" / "two.fcwarm-tmp.99.1", "junk");
  auto keys = [&](const std::string& prefix) {
    std::vector<std::string> out;
    auto l = store->List(prefix);
    REQUIRE_MESSAGE(l.ok(), l.status().ToString());
    for (const auto& o : *l) out.push_back(o.key);
    return out;
  };
  CHECK(keys("") == std::vector<std::string>{"a/b/one", "a/b/two", "a/c", "ab"});
  CHECK(keys("a/") == std::vector<std::string>{"a/b/one", "a/b/two", "a/c"});
  CHECK(keys("a") == std::vector<std::string>{"a/b/one", "a/b/two", "a/c", "ab"});
  CHECK(keys("a/b/t") == std::vector<std::string>{"a/b/two"});
  CHECK(keys("zz/").empty());
  auto l = store->List("a/c");
  REQUIRE(l.ok());
  CHECK((*l)[0].size == 3);
  CHECK(std::abs((*l)[0].last_modified_ms - util::NowMillis()) < 60'000);
  REQUIRE(store->Delete("a/c").ok());
  CHECK(store->Delete("a/c").ok());
  CHECK(store->Delete("never/was").ok());
  CHECK(keys("a/") == std::vector<std::string>{"a/b/one", "a/b/two"});
  // No temporary file is left by puts.
  int tmp_files = 0;
  for (const auto& e : fs::recursive_directory_iterator(tmp.path() / "root")) {
    if (Contains(e.path().filename().string(), ".fcwarm-tmp.") && e.path().filename() != "two.fcwarm-tmp.99.1") {
      ++tmp_files;
    }
  }
  CHECK(tmp_files == 0);
  CHECK(store->Describe() == "file://" + (tmp.path() / "root").string());
}

TEST_CASE("repo: repository URLs parse with clear errors") {
  auto ok = [](const char* url) {
    auto r = ParseRepositoryUrl(url);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    return *r;
  };
  auto err = [](const char* url) {
    auto r = ParseRepositoryUrl(url);
    REQUIRE(!r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(Contains(r.status().message(), "'" + std::string(url) + "'"));
    return r.status().message();
  };
  auto s3 = ok("s3://my-bucket/snaps/prod/");
  CHECK(s3.kind == RepositoryUrl::Kind::kS3);
  CHECK(s3.bucket == "my-bucket");
  CHECK(s3.prefix == "snaps/prod");
  CHECK(s3.ToString() == "s3://my-bucket/snaps/prod");
  CHECK(ok("s3://bucket.with.dots").prefix.empty());
  CHECK(ok("s3://abc/").prefix.empty());
  auto dir = ok("file:///srv/fcwarm/repo/");
  CHECK(dir.kind == RepositoryUrl::Kind::kDir);
  CHECK(dir.path == "/srv/fcwarm/repo");
  CHECK(dir.ToString() == "file:///srv/fcwarm/repo");

  CHECK(Contains(err(""), "empty"));
  CHECK(Contains(err("s3://"), "no bucket"));
  CHECK(Contains(err("s3:///prefix"), "no bucket"));
  CHECK(Contains(err("s3://ab"), "3 to 63"));
  CHECK(Contains(err("s3://My-Bucket"), "lower-case"));
  CHECK(Contains(err("s3://under_score"), "lower-case"));
  CHECK(Contains(err("s3://-bucket"), "start and end"));
  CHECK(Contains(err("s3://bucket-"), "start and end"));
  CHECK(Contains(err("s3://a..b"), "'..'"));
  CHECK(Contains(err("s3://192.168.1.1"), "IPv4"));
  CHECK(Contains(err("s3://xn--bucket"), "xn--"));
  CHECK(Contains(err("s3://b-s3alias"), "s3alias"));
  CHECK(Contains(err("s3://bucket/a//b"), "empty segment"));
  CHECK(Contains(err("s3://bucket/a/../b"), "'..'"));
  CHECK(Contains(err("s3://bucket/a b"), "printable"));
  CHECK(Contains(err("s3://bucket/a?x=1"), "'?'"));
  CHECK(Contains(err("http://bucket/x"), "unsupported scheme 'http'"));
  CHECK(Contains(err("gs://bucket"), "unsupported scheme"));
  CHECK(Contains(err("/srv/repo"), "not a URL"));
  CHECK(Contains(err("file://relative/dir"), "absolute"));
  CHECK(Contains(err("file:relative"), "file:///"));
  CHECK(Contains(err("file:///srv/../etc"), "'..'"));
  CHECK(Contains(err("file:///srv/./x"), "'.'"));
  CHECK(Contains(err("file:///srv/a%20b"), "percent"));
  CHECK(Contains(err("file:///"), "'/'"));

  TempDir tmp;
  auto url = ok(("file://" + tmp.str() + "/repo").c_str());
  auto store = OpenObjectStore(url);
  REQUIRE(store.ok());
  CHECK((*store)->Check().ok());
  CHECK((*store)->Describe() == "file://" + tmp.str() + "/repo");
}

TEST_CASE("repo: S3 credentials come from the environment or a shared credentials file") {
  const char* saved_id = std::getenv("AWS_ACCESS_KEY_ID");
  const char* saved_secret = std::getenv("AWS_SECRET_ACCESS_KEY");
  std::string keep_id = saved_id ? saved_id : "", keep_secret = saved_secret ? saved_secret : "";
  ::setenv("AWS_ACCESS_KEY_ID", "AKIDTEST", 1);
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  auto c = CredentialsFromEnvironment();
  CHECK(c.status().code() == StatusCode::kNotFound);
  CHECK(Contains(c.status().message(), "AWS_SECRET_ACCESS_KEY"));
  ::setenv("AWS_SECRET_ACCESS_KEY", "s3cret", 1);
  c = CredentialsFromEnvironment();
  REQUIRE(c.ok());
  CHECK(c->access_key_id == "AKIDTEST");
  CHECK(c->secret_access_key == "s3cret");
  if (saved_id) ::setenv("AWS_ACCESS_KEY_ID", keep_id.c_str(), 1); else ::unsetenv("AWS_ACCESS_KEY_ID");
  if (saved_secret) ::setenv("AWS_SECRET_ACCESS_KEY", keep_secret.c_str(), 1); else ::unsetenv("AWS_SECRET_ACCESS_KEY");

  TempDir tmp;
  auto file = tmp.path() / "credentials";
  WriteFile(file,
            "# comment\n[other]\naws_access_key_id = OTHER\naws_secret_access_key=x\n\n"
            "[default]\n  aws_access_key_id = AKID1  \n; comment\naws_secret_access_key = sec=ret\n"
            "aws_session_token = tok\nregion = us-east-1\n");
  auto f = CredentialsFromFile(file);
  REQUIRE_MESSAGE(f.ok(), f.status().ToString());
  CHECK(f->access_key_id == "AKID1");
  CHECK(f->secret_access_key == "sec=ret");
  CHECK(f->session_token == "tok");
  CHECK(CredentialsFromFile(file, "other")->access_key_id == "OTHER");
  CHECK(CredentialsFromFile(file, "missing").status().code() == StatusCode::kNotFound);
  CHECK(CredentialsFromFile(tmp.path() / "absent").status().code() == StatusCode::kNotFound);
  WriteFile(file, "[default]\naws_access_key_id = A\n");
  auto missing = CredentialsFromFile(file);
  CHECK(missing.status().code() == StatusCode::kInvalidArgument);
  CHECK(Contains(missing.status().message(), "aws_secret_access_key"));
  WriteFile(file, "[default]\njust words\n");
  auto malformed = CredentialsFromFile(file);
  CHECK(malformed.status().code() == StatusCode::kInvalidArgument);
  CHECK(Contains(malformed.status().message(), ":2"));
}

TEST_CASE("repo: S3 options are checked and keys are percent-encoded in URLs") {
  S3Options o;
  o.endpoint = "http://127.0.0.1:7480/";
  o.bucket = "bucket";
  o.credentials = {"id", "secret", ""};
  auto s = S3ObjectStore::Create(o);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  CHECK((*s)->ObjectUrl("a/b c+d=e~f_g.h") == "http://127.0.0.1:7480/bucket/a/b%20c%2Bd%3De~f_g.h");
  CHECK((*s)->Describe() == "s3://bucket at http://127.0.0.1:7480");
  auto code = [&](std::function<void(S3Options&)> tweak) {
    S3Options b = o;
    tweak(b);
    return S3ObjectStore::Create(b).status();
  };
  CHECK(Contains(code([](S3Options& b) { b.endpoint = ""; }).message(), "empty"));
  CHECK(Contains(code([](S3Options& b) { b.endpoint = "ftp://host"; }).message(), "http://"));
  CHECK(Contains(code([](S3Options& b) { b.endpoint = "http://"; }).message(), "no host"));
  CHECK(Contains(code([](S3Options& b) { b.endpoint = "http://host/path"; }).message(), "no path"));
  CHECK(Contains(code([](S3Options& b) { b.bucket = "Bad"; }).message(), "bucket"));
  CHECK(Contains(code([](S3Options& b) { b.credentials.secret_access_key = ""; }).message(), "secret"));
  CHECK(Contains(code([](S3Options& b) { b.credentials.access_key_id = ""; }).message(), "access key id"));
  CHECK(Contains(code([](S3Options& b) { b.max_keys = 0; }).message(), "max_keys"));
  CHECK(Contains(code([](S3Options& b) { b.region = ""; }).message(), "region"));
}

TEST_CASE("repo: an S3 endpoint that refuses connections is Unavailable at once") {
  // Port 1 on loopback: nothing listens, the kernel answers with a reset.
  S3Options o;
  o.endpoint = "http://127.0.0.1:1";
  o.bucket = "bucket";
  o.credentials = {"id", "secret", ""};
  auto s = S3ObjectStore::Create(o);
  REQUIRE(s.ok());
  auto start = std::chrono::steady_clock::now();
  Status st = (*s)->Check();
  CHECK(st.code() == StatusCode::kUnavailable);
  CHECK(Contains(st.message(), "http://127.0.0.1:1"));
  CHECK(Contains(st.message(), "unreachable"));
  auto put = (*s)->Put("k", "v");
  CHECK(put.code() == StatusCode::kUnavailable);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));
}

TEST_CASE("repo: two nodes publishing the same data at once both succeed and share the chunks") {
  TempDir tmp;
  auto store = OpenDir(tmp.path() / "repo");
  auto g = MakeGeneration(tmp.path() / "gen", 400);
  auto a = MakeRepo(store, "p", {}, 4);
  RepositoryOptions ob;
  ob.chunk_size = kChunk;
  ob.workers = 4;
  ob.node = "node-b";
  auto b = SnapshotRepository::Create(store, "p", ob);
  REQUIRE(b.ok());
  Result<PublishResult> ra = Status::Internal("not run"), rb = Status::Internal("not run");
  std::thread ta([&] { ra = a->Publish({g.dir, g.files, "shared", "{}"}); });
  std::thread tb([&] { rb = (*b)->Publish({g.dir, g.files, "shared", "{}"}); });
  ta.join();
  tb.join();
  REQUIRE_MESSAGE(ra.ok(), ra.status().ToString());
  REQUIRE_MESSAGE(rb.ok(), rb.status().ToString());
  CHECK(ra->manifest.generation != rb->manifest.generation);
  CHECK(store->List("p/chunks/")->size() == 5);
  CHECK(repo::SnapshotRepository::ValidateRepoKey("shared").ok());
  for (const auto* r : {&ra.value(), &rb.value()}) {
    fs::path out = tmp.path() / ("out-" + r->manifest.node);
    auto f = a->Fetch(r->manifest, out);
    REQUIRE_MESSAGE(f.ok(), f.status().ToString());
    CHECK(Slurp(out / "memory") == Slurp(g.dir / "memory"));
  }
}
