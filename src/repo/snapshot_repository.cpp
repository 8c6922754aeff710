#include "repo/snapshot_repository.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "util/common.hpp"

namespace fcwarm::repo {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

constexpr std::string_view kManifestFormat = "fcwarm-snapshot-repository-manifest";
constexpr std::string_view kNodeFormat = "fcwarm-snapshot-repository-node";
constexpr size_t kPage = 4096;

// ---- small helpers ---------------------------------------------------------------------------------------

bool IsHex32(std::string_view s) {
  if (s.size() != 32) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool IsZero(const char* p, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w != 0) return false;
  }
  for (; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

Status CheckName(std::string_view name, std::string_view what) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos || name.size() > 255) {
    return Status::InvalidArgument(std::string(what) + ": '" + std::string(name) +
                                   "' is not a plain file name (1-255 bytes, no '/', not '.' or '..')");
  }
  return Status::Ok();
}

Status CheckToken(const std::string& s, std::string_view what, std::string_view extra, size_t max) {
  auto ok_char = [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
           extra.find(c) != std::string_view::npos;
  };
  if (s.empty() || s.size() > max || !std::isalnum(static_cast<unsigned char>(s.front())) ||
      !std::all_of(s.begin(), s.end(), ok_char)) {
    return Status::InvalidArgument(std::string(what) + " '" + s + "' must be 1-" + std::to_string(max) +
                                   " characters of [A-Za-z0-9._-" + std::string(extra) +
                                   "] starting with a letter or digit");
  }
  return Status::Ok();
}

Status ReadAt(int fd, char* buf, size_t n, uint64_t off, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, buf + done, n - done, static_cast<off_t>(off + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return util::ErrnoStatus(errno, "read " + what);
    if (r == 0) return Status::FailedPrecondition(what + " is shorter than its manifest says (it changed)");
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

Status WriteAt(int fd, const char* buf, size_t n, uint64_t off, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pwrite(fd, buf + done, n - done, static_cast<off_t>(off + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return util::ErrnoStatus(r < 0 ? errno : ENOSPC, "write " + what);
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

// Writes `data` at `off`, skipping all-zero pages so that they stay holes (the file was ftruncated to its size).
Status WriteSparse(int fd, std::string_view data, uint64_t off, const std::string& what) {
  size_t i = 0;
  while (i < data.size()) {
    while (i < data.size() && IsZero(data.data() + i, std::min(kPage, data.size() - i))) i += kPage;
    if (i >= data.size()) break;
    size_t j = i;
    while (j < data.size() && !IsZero(data.data() + j, std::min(kPage, data.size() - j))) j += kPage;
    j = std::min(j, data.size());
    if (auto st = WriteAt(fd, data.data() + i, j - i, off + i, what); !st.ok()) return st;
    i = j;
  }
  return Status::Ok();
}

// First error wins; the others are dropped.
class ErrorSlot {
 public:
  void Set(Status st) {
    std::lock_guard lock(mu_);
    if (st_.ok() && !st.ok()) st_ = std::move(st);
    failed_.store(true);
  }
  bool failed() const { return failed_.load(); }
  Status Get() const {
    std::lock_guard lock(mu_);
    return st_;
  }

 private:
  mutable std::mutex mu_;
  Status st_;
  std::atomic<bool> failed_{false};
};

// A bounded multi-producer multi-consumer queue.
template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t cap) : cap_(cap) {}
  void Push(T v) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return q_.size() < cap_ || closed_; });
    q_.push_back(std::move(v));
    not_empty_.notify_one();
  }
  std::optional<T> Pop() {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return std::nullopt;
    T v = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
    return v;
  }
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  size_t cap_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> q_;
  bool closed_ = false;
};

void RunWorkers(unsigned n, const std::function<void()>& body) {
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned i = 0; i < n; ++i) threads.emplace_back(body);
  for (auto& t : threads) t.join();
}

// ---- JSON reading ----------------------------------------------------------------------------------------

struct Reader {
  std::string_view what;
  Status err;
  void Fail(const std::string& field, const std::string& why) {
    if (err.ok()) err = Status::DataLoss(std::string(what) + ": field '" + field + "' " + why);
  }
  Status Bad(const std::string& field, const std::string& why) {
    Fail(field, why);
    return err;
  }
  const json::value* Field(const json::object& o, const std::string& name, const std::string& path) {
    auto it = o.find(name);
    if (it == o.end()) {
      Fail(path + name, "is missing");
      return nullptr;
    }
    return &it->value();
  }
  std::string Str(const json::object& o, const std::string& name, const std::string& path = "") {
    const json::value* v = Field(o, name, path);
    if (v == nullptr) return "";
    if (!v->is_string()) {
      Fail(path + name, "is not a string");
      return "";
    }
    return std::string(v->get_string());
  }
  int64_t Int(const json::object& o, const std::string& name, const std::string& path = "") {
    const json::value* v = Field(o, name, path);
    if (v == nullptr) return 0;
    if (v->is_int64() && v->get_int64() >= 0) return v->get_int64();
    if (v->is_uint64() && v->get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
      return static_cast<int64_t>(v->get_uint64());
    }
    Fail(path + name, "is not a non-negative integer");
    return 0;
  }
};

std::string DigestHex(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  std::string out;
  static const char* kDigits = "0123456789abcdef";
  for (unsigned char b : c.digest) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

}  // namespace

// ---- manifest --------------------------------------------------------------------------------------------

uint64_t Manifest::RawBytes() const {
  uint64_t n = 0;
  for (const auto& f : files) n += f.size;
  return n;
}

std::string ManifestToJson(const Manifest& m) {
  json::array files;
  for (const auto& f : m.files) {
    json::array chunks;
    for (const auto& c : f.chunks) {
      if (c.hole()) {
        chunks.push_back(json::object{{"hole", true}});
      } else {
        chunks.push_back(json::object{{"digest", c.digest}, {"stored", c.stored_size}});
      }
    }
    files.push_back(json::object{{"name", f.name},
                                 {"size", f.size},
                                 {"xxh3", f.xxh3},
                                 {"chunk_size", f.chunk_size},
                                 {"chunks", std::move(chunks)}});
  }
  json::error_code ec;
  json::value metadata = json::parse(m.metadata_json.empty() ? "{}" : m.metadata_json, ec);
  if (ec || !metadata.is_object()) metadata = json::object{};
  json::object o{{"format", kManifestFormat},
                 {"version", m.version},
                 {"repo_key", m.repo_key},
                 {"generation", m.generation},
                 {"created_at", m.created_at_ms},
                 {"node", m.node},
                 {"compression", m.compression},
                 {"metadata", std::move(metadata)},
                 {"files", std::move(files)}};
  return json::serialize(o) + "\n";
}

Result<Manifest> ManifestFromJson(std::string_view text, std::string_view what) {
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return Status::DataLoss(std::string(what) + ": not JSON: " + ec.message());
  if (!v.is_object()) return Status::DataLoss(std::string(what) + ": not a JSON object");
  const json::object& o = v.get_object();
  Reader r{what, {}};
  Manifest m;
  if (r.Str(o, "format") != kManifestFormat && r.err.ok()) {
    return Status::DataLoss(std::string(what) + ": format is not '" + std::string(kManifestFormat) + "'");
  }
  m.version = static_cast<int>(r.Int(o, "version"));
  if (r.err.ok() && m.version != kManifestVersion) {
    return Status::DataLoss(std::string(what) + ": manifest version " + std::to_string(m.version) +
                            " is not supported (this build reads " + std::to_string(kManifestVersion) + ")");
  }
  m.repo_key = r.Str(o, "repo_key");
  m.generation = r.Str(o, "generation");
  m.created_at_ms = r.Int(o, "created_at");
  m.node = r.Str(o, "node");
  m.compression = r.Str(o, "compression");
  if (r.err.ok() && m.compression != "zstd") r.Fail("compression", "is not 'zstd'");
  if (const json::value* md = r.Field(o, "metadata", ""); md != nullptr) {
    if (!md->is_object()) r.Fail("metadata", "is not an object");
    else m.metadata_json = json::serialize(*md);
  }
  const json::value* fv = r.Field(o, "files", "");
  if (fv != nullptr && !fv->is_array()) r.Fail("files", "is not an array");
  if (!r.err.ok()) return r.err;
  std::set<std::string> names;
  for (size_t i = 0; i < fv->get_array().size(); ++i) {
    std::string path = "files[" + std::to_string(i) + "].";
    const json::value& e = fv->get_array()[i];
    if (!e.is_object()) return r.Bad("files[" + std::to_string(i) + "]", "is not an object");
    const json::object& fo = e.get_object();
    ManifestFile f;
    f.name = r.Str(fo, "name", path);
    f.size = static_cast<uint64_t>(r.Int(fo, "size", path));
    f.xxh3 = r.Str(fo, "xxh3", path);
    f.chunk_size = static_cast<uint64_t>(r.Int(fo, "chunk_size", path));
    const json::value* cv = r.Field(fo, "chunks", path);
    if (!r.err.ok()) return r.err;
    if (auto st = CheckName(f.name, "name"); !st.ok()) return r.Bad(path + "name", "is not a plain file name");
    if (!names.insert(f.name).second) return r.Bad(path + "name", "repeats '" + f.name + "'");
    if (!IsHex32(f.xxh3)) return r.Bad(path + "xxh3", "is not 32 lower-case hex digits");
    if (f.chunk_size == 0) return r.Bad(path + "chunk_size", "is 0");
    if (!cv->is_array()) return r.Bad(path + "chunks", "is not an array");
    uint64_t expect = (f.size + f.chunk_size - 1) / f.chunk_size;
    if (cv->get_array().size() != expect) {
      return r.Bad(path + "chunks", "has " + std::to_string(cv->get_array().size()) + " entries, the size needs " +
                                        std::to_string(expect));
    }
    for (size_t j = 0; j < cv->get_array().size(); ++j) {
      std::string cpath = path + "chunks[" + std::to_string(j) + "]";
      const json::value& c = cv->get_array()[j];
      if (!c.is_object()) return r.Bad(cpath, "is not an object");
      const json::object& co = c.get_object();
      ChunkRef ref;
      if (auto it = co.find("hole"); it != co.end()) {
        if (!it->value().is_bool() || !it->value().get_bool() || co.size() != 1) {
          return r.Bad(cpath, "is not {\"hole\": true}");
        }
      } else {
        ref.digest = r.Str(co, "digest", cpath + ".");
        ref.stored_size = static_cast<uint64_t>(r.Int(co, "stored", cpath + "."));
        if (!r.err.ok()) return r.err;
        if (!IsHex32(ref.digest)) return r.Bad(cpath + ".digest", "is not 32 lower-case hex digits");
      }
      f.chunks.push_back(std::move(ref));
    }
    m.files.push_back(std::move(f));
  }
  return m;
}

// ---- repository ------------------------------------------------------------------------------------------

Result<std::unique_ptr<SnapshotRepository>> SnapshotRepository::Create(std::shared_ptr<ObjectStore> store,
                                                                      std::string prefix, RepositoryOptions o) {
  if (store == nullptr) return Status::InvalidArgument("repository: no object store");
  if (!prefix.empty()) {
    if (auto st = ValidateKey(prefix); !st.ok()) {
      return Status::InvalidArgument("repository prefix: " + st.message());
    }
  }
  if (o.chunk_size < (64u << 10) || o.chunk_size > (64u << 20) || o.chunk_size % kPage != 0) {
    return Status::InvalidArgument("repository chunk_size " + std::to_string(o.chunk_size) +
                                   " must be a multiple of 4096 in [64 KiB, 64 MiB]");
  }
  if (o.zstd_level < 1 || o.zstd_level > 19) {
    return Status::InvalidArgument("repository zstd_level " + std::to_string(o.zstd_level) + " must be 1..19");
  }
  if (o.workers < 1 || o.workers > 64) {
    return Status::InvalidArgument("repository workers " + std::to_string(o.workers) + " must be 1..64");
  }
  if (auto st = ValidateNodeId(o.node); !st.ok()) return st.WithContext("repository node");
  return std::unique_ptr<SnapshotRepository>(new SnapshotRepository(std::move(store), std::move(prefix), std::move(o)));
}

SnapshotRepository::SnapshotRepository(std::shared_ptr<ObjectStore> store, std::string prefix, RepositoryOptions o)
    : store_(std::move(store)), base_(prefix.empty() ? "" : prefix + "/"), options_(std::move(o)) {}

SnapshotRepository::~SnapshotRepository() = default;

Status SnapshotRepository::ValidateRepoKey(const std::string& key) { return CheckToken(key, "repository key", ":", 200); }
Status SnapshotRepository::ValidateNodeId(const std::string& node) { return CheckToken(node, "node id", "", 128); }

int64_t SnapshotRepository::Now() const { return options_.clock ? options_.clock() : util::NowMillis(); }

std::string SnapshotRepository::NewGenerationId() const {
  int64_t now = Now();
  time_t secs = static_cast<time_t>(now / 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%S", &tm);
  std::random_device rd;
  char out[96];
  std::snprintf(out, sizeof(out), "%s%03dZ-%08x", buf, static_cast<int>(now % 1000), static_cast<unsigned>(rd()));
  return out;
}

std::string SnapshotRepository::Describe() const {
  return store_->Describe() + (base_.empty() ? "" : " prefix " + base_.substr(0, base_.size() - 1));
}

std::string SnapshotRepository::ChunkKey(const std::string& digest) const {
  return base_ + "chunks/" + digest.substr(0, 2) + "/" + digest;
}
std::string SnapshotRepository::ManifestKey(const GenerationRef& ref) const {
  return base_ + "manifests/" + ref.repo_key + "/" + ref.generation + ".json";
}
std::string SnapshotRepository::NodeKey(const std::string& node) const { return base_ + "nodes/" + node + ".json"; }

Status SnapshotRepository::Check() { return store_->Check(); }

Result<PublishResult> SnapshotRepository::Publish(const PublishRequest& req) {
  auto start = std::chrono::steady_clock::now();
  if (auto st = ValidateRepoKey(req.repo_key); !st.ok()) return st.WithContext("publish");
  if (req.files.empty()) return Status::InvalidArgument("publish: the file list is empty");
  std::set<std::string> names;
  for (const auto& f : req.files) {
    if (auto st = CheckName(f.name, "publish: file name"); !st.ok()) return st;
    if (!names.insert(f.name).second) return Status::InvalidArgument("publish: file '" + f.name + "' is listed twice");
    if (!f.xxh3.empty() && !IsHex32(f.xxh3)) {
      return Status::InvalidArgument("publish: file '" + f.name + "': xxh3 is not 32 lower-case hex digits");
    }
  }
  json::error_code ec;
  json::value metadata = json::parse(req.metadata_json, ec);
  if (ec || !metadata.is_object()) return Status::InvalidArgument("publish: metadata_json is not a JSON object");

  Manifest m;
  m.repo_key = req.repo_key;
  m.generation = NewGenerationId();
  m.node = options_.node;
  m.compression = "zstd";
  m.metadata_json = json::serialize(metadata);
  PublishStats stats;

  struct Task {
    std::string digest;
    std::string data;
  };
  const unsigned workers = options_.workers;
  BoundedQueue<Task> queue(2 * workers);
  ErrorSlot error;
  std::mutex mu;                          // guards stored and stats
  std::map<std::string, uint64_t> stored;  // digest → stored bytes, once its chunk is in the store
  std::set<std::string> claimed;          // digests queued by this publish (reader thread only)

  auto worker = [&] {
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    std::string out;
    while (auto task = queue.Pop()) {
      if (error.failed()) continue;  // drain so that the reader never blocks
      std::string key = ChunkKey(task->digest);
      auto head = store_->Head(key);
      if (!head.ok()) {
        error.Set(head.status().WithContext("publish: head chunk " + task->digest));
        continue;
      }
      if (head->exists) {
        std::lock_guard lock(mu);
        stored[task->digest] = head->size;
        stats.present_chunks++;
        stats.present_bytes += head->size;
        continue;
      }
      if (cctx == nullptr) {
        error.Set(Status::Internal("publish: ZSTD_createCCtx failed"));
        continue;
      }
      out.resize(ZSTD_compressBound(task->data.size()));
      size_t n = ZSTD_compressCCtx(cctx, out.data(), out.size(), task->data.data(), task->data.size(),
                                   options_.zstd_level);
      if (ZSTD_isError(n)) {
        error.Set(Status::Internal(std::string("publish: zstd: ") + ZSTD_getErrorName(n)));
        continue;
      }
      if (auto st = store_->Put(key, std::string_view(out.data(), n)); !st.ok()) {
        error.Set(st.WithContext("publish: put chunk " + task->digest));
        continue;
      }
      std::lock_guard lock(mu);
      stored[task->digest] = n;
      stats.uploaded_chunks++;
      stats.uploaded_bytes += n;
      stats.uploaded_raw_bytes += task->data.size();
    }
    ZSTD_freeCCtx(cctx);
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < workers; ++i) threads.emplace_back(worker);

  // The reader: every file in order, chunk by chunk: whole-file XXH3, holes, chunk digests, queueing.
  const uint64_t cs = options_.chunk_size;
  for (const auto& f : req.files) {
    if (error.failed()) break;
    fs::path path = req.dir / f.name;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      error.Set(util::ErrnoStatus(errno, "publish: cannot open " + path.string(), StatusCode::kFailedPrecondition));
      break;
    }
    struct stat sb;
    if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || static_cast<uint64_t>(sb.st_size) != f.size) {
      ::close(fd);
      error.Set(Status::FailedPrecondition("publish: " + path.string() + " is not a regular file of " +
                                           std::to_string(f.size) + " bytes as listed (it changed)"));
      break;
    }
    ManifestFile mf;
    mf.name = f.name;
    mf.size = f.size;
    mf.chunk_size = cs;
    XXH3_state_t* xs = XXH3_createState();
    XXH3_128bits_reset(xs);
    std::string buf;
    for (uint64_t off = 0; off < f.size && !error.failed(); off += cs) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(cs, f.size - off));
      buf.resize(n);
      if (auto st = ReadAt(fd, buf.data(), n, off, path.string()); !st.ok()) {
        error.Set(st.WithContext("publish"));
        break;
      }
      XXH3_128bits_update(xs, buf.data(), n);
      stats.chunks++;
      if (IsZero(buf.data(), n)) {
        stats.hole_chunks++;
        stats.zero_bytes += n;
        mf.chunks.push_back(ChunkRef{});
        continue;
      }
      std::string digest = util::Xxh3Hex(buf);
      mf.chunks.push_back(ChunkRef{digest, 0});
      if (!claimed.insert(digest).second) {
        std::lock_guard lock(mu);
        stats.present_chunks++;  // repeated inside this publish
        continue;
      }
      queue.Push(Task{std::move(digest), std::move(buf)});
      buf = std::string();
    }
    ::close(fd);
    mf.xxh3 = DigestHex(XXH3_128bits_digest(xs));
    XXH3_freeState(xs);
    if (error.failed()) break;
    if (!f.xxh3.empty() && f.xxh3 != mf.xxh3) {
      error.Set(Status::FailedPrecondition("publish: " + path.string() + " has XXH3 " + mf.xxh3 +
                                           ", its manifest says " + f.xxh3 + " (it changed)"));
      break;
    }
    stats.raw_bytes += f.size;
    m.files.push_back(std::move(mf));
  }
  queue.Close();
  for (auto& t : threads) t.join();
  if (error.failed()) return error.Get();

  for (auto& f : m.files) {
    for (auto& c : f.chunks) {
      if (!c.hole()) c.stored_size = stored.at(c.digest);
    }
  }
  // Every chunk is stored: now, and only now, the manifest.
  m.created_at_ms = Now();
  std::string text = ManifestToJson(m);
  GenerationRef ref{m.repo_key, m.generation};
  std::string key = ManifestKey(ref);
  if (auto st = store_->Put(key, text); !st.ok()) return st.WithContext("publish: put manifest " + key);
  stats.manifest_bytes = text.size();
  stats.ms = util::MsSince(start);
  return PublishResult{std::move(m), std::move(key), stats};
}

Result<Manifest> SnapshotRepository::Load(const GenerationRef& ref) {
  if (auto st = ValidateRepoKey(ref.repo_key); !st.ok()) return st;
  if (auto st = CheckToken(ref.generation, "generation id", "", 128); !st.ok()) return st;
  std::string key = ManifestKey(ref);
  auto text = store_->Get(key);
  if (!text.ok()) return text.status();
  auto m = ManifestFromJson(*text, "manifest " + key);
  if (!m.ok()) return m;
  if (m->repo_key != ref.repo_key || m->generation != ref.generation) {
    return Status::DataLoss("manifest " + key + " names repository key '" + m->repo_key + "' generation '" +
                            m->generation + "' (it was moved or tampered with)");
  }
  return m;
}

Result<std::vector<GenerationInfo>> SnapshotRepository::ListGenerations() {
  std::string prefix = base_ + "manifests/";
  auto objects = store_->List(prefix);
  if (!objects.ok()) return objects.status();
  std::vector<GenerationInfo> out;
  for (const auto& o : *objects) {
    std::string rest = o.key.substr(prefix.size());
    size_t slash = rest.find('/');
    if (slash == std::string::npos || rest.size() < 5 || rest.compare(rest.size() - 5, 5, ".json") != 0) continue;
    std::string gen = rest.substr(slash + 1, rest.size() - 5 - slash - 1);
    if (gen.find('/') != std::string::npos) continue;
    out.push_back(GenerationInfo{{rest.substr(0, slash), gen}, o.key, o.size, o.last_modified_ms});
  }
  std::sort(out.begin(), out.end(), [](const GenerationInfo& a, const GenerationInfo& b) { return a.ref < b.ref; });
  return out;
}

Result<Manifest> SnapshotRepository::FindLatest(const std::string& repo_key) {
  if (auto st = ValidateRepoKey(repo_key); !st.ok()) return st;
  std::string prefix = base_ + "manifests/" + repo_key + "/";
  auto objects = store_->List(prefix);
  if (!objects.ok()) return objects.status();
  std::string best;
  for (const auto& o : *objects) {
    std::string rest = o.key.substr(prefix.size());
    if (rest.find('/') != std::string::npos || rest.size() <= 5 || rest.compare(rest.size() - 5, 5, ".json") != 0) {
      continue;
    }
    std::string gen = rest.substr(0, rest.size() - 5);
    if (gen > best) best = gen;
  }
  if (best.empty()) {
    return Status::NotFound("no generation of repository key '" + repo_key + "' in " + Describe());
  }
  return Load({repo_key, best});
}

Result<FetchStats> SnapshotRepository::Fetch(const Manifest& m, const fs::path& dest) {
  auto start = std::chrono::steady_clock::now();
  for (const auto& f : m.files) {
    if (auto st = CheckName(f.name, "fetch: file name"); !st.ok()) return st;
    for (const auto& c : f.chunks) {
      if (!c.hole() && !IsHex32(c.digest)) {
        return Status::InvalidArgument("fetch: file '" + f.name + "': chunk digest '" + c.digest + "' is not 32 hex digits");
      }
    }
    if (f.chunk_size == 0 || f.chunks.size() != (f.size + f.chunk_size - 1) / f.chunk_size) {
      return Status::InvalidArgument("fetch: file '" + f.name + "': the chunk list does not match the size");
    }
  }
  std::error_code ec;
  bool created_dir = !fs::exists(dest, ec);
  if (auto st = util::MakeDirs(dest); !st.ok()) return st.WithContext("fetch");

  struct Out {
    fs::path path;
    int fd = -1;
  };
  std::vector<Out> outs;
  auto cleanup = [&] {
    for (auto& o : outs) {
      if (o.fd >= 0) ::close(o.fd);
      ::unlink(o.path.c_str());
    }
    outs.clear();
    if (created_dir) util::RemoveTree(dest);
  };
  FetchStats stats;
  struct Task {
    size_t file;
    size_t chunk;
  };
  std::vector<Task> tasks;
  for (size_t i = 0; i < m.files.size(); ++i) {
    const auto& f = m.files[i];
    fs::path path = dest / f.name;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      int e = errno;
      cleanup();
      if (e == EEXIST) return Status::AlreadyExists("fetch: " + path.string() + " exists already");
      return util::ErrnoStatus(e, "fetch: cannot create " + path.string());
    }
    outs.push_back({path, fd});
    if (::ftruncate(fd, static_cast<off_t>(f.size)) != 0) {
      int e = errno;
      cleanup();
      return util::ErrnoStatus(e, "fetch: truncate " + path.string());
    }
    stats.raw_bytes += f.size;
    for (size_t c = 0; c < f.chunks.size(); ++c) {
      stats.chunks++;
      uint64_t raw = std::min<uint64_t>(f.chunk_size, f.size - c * f.chunk_size);
      if (f.chunks[c].hole()) {
        stats.zero_bytes += raw;
      } else {
        tasks.push_back({i, c});
      }
    }
  }

  ErrorSlot error;
  std::atomic<size_t> next{0};
  std::mutex mu;
  RunWorkers(std::min<unsigned>(options_.workers, std::max<size_t>(1, tasks.size())), [&] {
    ZSTD_DCtx* dctx = ZSTD_createDCtx();
    std::string raw;
    while (!error.failed()) {
      size_t t = next++;
      if (t >= tasks.size()) break;
      const ManifestFile& f = m.files[tasks[t].file];
      size_t c = tasks[t].chunk;
      const std::string& digest = f.chunks[c].digest;
      std::string where = "file '" + f.name + "' chunk " + std::to_string(c) + " (digest " + digest + ")";
      uint64_t off = c * f.chunk_size;
      size_t want = static_cast<size_t>(std::min<uint64_t>(f.chunk_size, f.size - off));
      auto data = store_->Get(ChunkKey(digest));
      if (!data.ok()) {
        if (data.status().code() == StatusCode::kNotFound) {
          error.Set(Status::DataLoss("fetch: " + where + " is missing from " + Describe()));
        } else {
          error.Set(data.status().WithContext("fetch: " + where));
        }
        break;
      }
      unsigned long long frame = ZSTD_getFrameContentSize(data->data(), data->size());
      if (frame != want || dctx == nullptr) {
        error.Set(Status::DataLoss("fetch: " + where + " is corrupt: not a zstd frame of " + std::to_string(want) +
                                   " bytes"));
        break;
      }
      raw.resize(want);
      size_t n = ZSTD_decompressDCtx(dctx, raw.data(), raw.size(), data->data(), data->size());
      if (ZSTD_isError(n) || n != want) {
        error.Set(Status::DataLoss("fetch: " + where + " is corrupt: " +
                                   (ZSTD_isError(n) ? std::string(ZSTD_getErrorName(n)) : "short frame")));
        break;
      }
      std::string got = util::Xxh3Hex(raw);
      if (got != digest) {
        error.Set(Status::DataLoss("fetch: " + where + " is corrupt: its content hashes to " + got));
        break;
      }
      if (auto st = WriteSparse(outs[tasks[t].file].fd, raw, off, outs[tasks[t].file].path.string()); !st.ok()) {
        error.Set(st.WithContext("fetch"));
        break;
      }
      std::lock_guard lock(mu);
      stats.downloaded_chunks++;
      stats.downloaded_bytes += data->size();
    }
    ZSTD_freeDCtx(dctx);
  });
  if (error.failed()) {
    cleanup();
    return error.Get();
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    int fd = outs[i].fd;
    outs[i].fd = -1;
    if (::close(fd) != 0 && util::IsNoSpace(errno)) {
      Status st = util::ErrnoStatus(errno, "fetch: close " + outs[i].path.string());
      cleanup();
      return st;
    }
    auto digest = util::Xxh3File(outs[i].path);
    if (!digest.ok()) {
      cleanup();
      return digest.status().WithContext("fetch");
    }
    if (*digest != m.files[i].xxh3) {
      Status st = Status::DataLoss("fetch: file '" + m.files[i].name + "' hashes to " + *digest +
                                   ", the manifest says " + m.files[i].xxh3);
      cleanup();
      return st;
    }
  }
  stats.ms = util::MsSince(start);
  return stats;
}

Status SnapshotRepository::RecordNodeUse(const std::string& node, const std::vector<GenerationRef>& in_use) {
  if (auto st = ValidateNodeId(node); !st.ok()) return st;
  json::array gens;
  for (const auto& g : in_use) {
    if (auto st = ValidateRepoKey(g.repo_key); !st.ok()) return st;
    if (auto st = CheckToken(g.generation, "generation id", "", 128); !st.ok()) return st;
    gens.push_back(json::object{{"repo_key", g.repo_key}, {"generation", g.generation}});
  }
  json::object o{{"format", kNodeFormat}, {"node", node}, {"updated_at", Now()}, {"generations", std::move(gens)}};
  return store_->Put(NodeKey(node), json::serialize(o) + "\n");
}

Status SnapshotRepository::ForgetNode(const std::string& node) {
  if (auto st = ValidateNodeId(node); !st.ok()) return st;
  return store_->Delete(NodeKey(node));
}

Result<GcReport> SnapshotRepository::Gc(const GcOptions& opt) {
  GcReport report;
  report.dry_run = opt.dry_run;
  const int64_t now = Now();

  // 1. Live node records: the generations they name are in use.
  std::set<GenerationRef> in_use;
  std::string nodes_prefix = base_ + "nodes/";
  auto nodes = store_->List(nodes_prefix);
  if (!nodes.ok()) return nodes.status().WithContext("gc: list node records");
  for (const auto& o : *nodes) {
    auto text = store_->Get(o.key);
    if (!text.ok()) {
      if (text.status().code() == StatusCode::kNotFound) continue;  // forgotten meanwhile
      return text.status().WithContext("gc: node record");
    }
    json::error_code ec;
    json::value v = json::parse(*text, ec);
    std::string what = "gc: node record " + o.key;
    Reader r{what, {}};
    if (ec || !v.is_object()) {
      return Status::DataLoss(what + " is not a JSON object (fix it or ForgetNode it; nothing was deleted)");
    }
    const json::object& no = v.get_object();
    std::string node = r.Str(no, "node");
    int64_t updated = r.Int(no, "updated_at");
    const json::value* gv = r.Field(no, "generations", "");
    if (r.err.ok() && !gv->is_array()) r.Fail("generations", "is not an array");
    std::vector<GenerationRef> refs;
    if (r.err.ok()) {
      for (const auto& g : gv->get_array()) {
        if (!g.is_object()) {
          r.Fail("generations[]", "is not an object");
          break;
        }
        refs.push_back({r.Str(g.get_object(), "repo_key"), r.Str(g.get_object(), "generation")});
      }
    }
    if (!r.err.ok()) return Status::DataLoss(r.err.message() + " (fix it or ForgetNode it; nothing was deleted)");
    if (now - updated > opt.node_record_ttl.count()) {
      report.nodes_stale.push_back(node);
      continue;
    }
    report.nodes_live.push_back(node);
    in_use.insert(refs.begin(), refs.end());
  }

  // 2. Manifests: keep the newest per key, the young ones, the ones in use; the rest goes.
  auto gens = ListGenerations();
  if (!gens.ok()) return gens.status().WithContext("gc: list manifests");
  std::set<std::string> referenced;
  std::set<std::string> seen_manifests;
  std::vector<GenerationInfo> to_delete;
  auto add_refs = [&](const Manifest& m) {
    for (const auto& f : m.files) {
      for (const auto& c : f.chunks) {
        if (!c.hole()) referenced.insert(c.digest);
      }
    }
  };
  std::map<std::string, std::vector<const GenerationInfo*>> by_key;
  for (const auto& g : *gens) by_key[g.ref.repo_key].push_back(&g);
  for (auto& [key, list] : by_key) {
    std::sort(list.begin(), list.end(),
              [](const GenerationInfo* a, const GenerationInfo* b) { return a->ref.generation > b->ref.generation; });
    unsigned rank = 0;
    for (const GenerationInfo* g : list) {
      seen_manifests.insert(g->manifest_key);
      bool used = in_use.count(g->ref) > 0;
      auto m = Load(g->ref);
      if (!m.ok()) {
        if (m.status().code() == StatusCode::kNotFound) continue;  // deleted meanwhile
        // DataLoss: it does not parse; InvalidArgument: its key or id is not one Publish writes.
        if (m.status().code() != StatusCode::kDataLoss && m.status().code() != StatusCode::kInvalidArgument) {
          return m.status().WithContext("gc");
        }
        report.corrupt_manifests.push_back(g->ref);
        if (used) {
          report.manifests_kept.push_back(g->ref);
        } else {
          to_delete.push_back(*g);
        }
        continue;
      }
      bool newest = rank++ < opt.keep_newest;
      bool young = now - m->created_at_ms < opt.keep_newer_than.count();
      if (newest || young || used) {
        report.manifests_kept.push_back(g->ref);
        add_refs(*m);
      } else {
        to_delete.push_back(*g);
      }
    }
  }
  for (const auto& g : to_delete) {
    report.manifests_deleted.push_back(g.ref);
    if (opt.dry_run) continue;
    if (auto st = store_->Delete(g.manifest_key); !st.ok()) return st.WithContext("gc: delete manifest");
  }

  // 3. Chunks no kept manifest references, older than min_chunk_age. The manifests are listed again first:
  // one published since step 2 keeps its chunks.
  std::string chunk_prefix = base_ + "chunks/";
  auto chunks = store_->List(chunk_prefix);
  if (!chunks.ok()) return chunks.status().WithContext("gc: list chunks");
  auto again = ListGenerations();
  if (!again.ok()) return again.status().WithContext("gc: list manifests");
  for (const auto& g : *again) {
    if (seen_manifests.count(g.manifest_key) > 0) continue;
    auto m = Load(g.ref);
    if (m.ok()) add_refs(*m);
    else if (m.status().code() != StatusCode::kNotFound && m.status().code() != StatusCode::kDataLoss &&
             m.status().code() != StatusCode::kInvalidArgument) {
      return m.status().WithContext("gc");
    }
  }
  std::vector<const ObjectInfo*> doomed;
  for (const auto& o : *chunks) {
    std::string digest = o.key.substr(o.key.rfind('/') + 1);
    if (referenced.count(digest) > 0) {
      report.chunks_kept++;
      continue;
    }
    if (now - o.last_modified_ms < opt.min_chunk_age.count()) {
      report.chunks_kept++;
      report.chunks_young++;
      continue;
    }
    doomed.push_back(&o);
  }
  report.chunks_deleted = doomed.size();
  for (const auto* o : doomed) report.chunk_bytes_deleted += o->size;
  if (!opt.dry_run && !doomed.empty()) {
    ErrorSlot error;
    std::atomic<size_t> next{0};
    RunWorkers(std::min<unsigned>(options_.workers, doomed.size()), [&] {
      while (!error.failed()) {
        size_t i = next++;
        if (i >= doomed.size()) break;
        if (auto st = store_->Delete(doomed[i]->key); !st.ok()) error.Set(st.WithContext("gc: delete chunk"));
      }
    });
    if (error.failed()) return error.Get();
  }
  return report;
}

}  // namespace fcwarm::repo
