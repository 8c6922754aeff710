// The snapshot repository on a real generation directory (issue 16): publish it (cold, then again: everything
// de-duplicated), fetch it back into a scratch directory and verify it, and print sizes and times.
//
// Usage: repo_bench --dir GEN_DIR [--repo s3://BUCKET/PREFIX | file:///DIR] [--s3-endpoint URL]
//                   [--s3-region REGION] [--workers N] [--chunk-mib N] [--level N] [--keep]
//
// GEN_DIR is a generation directory (".../gen-N" with manifest.json: its file list is used; without one, every
// regular file). Without --repo a scratch directory repository is used. An s3:// repository takes its
// credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the endpoint from --s3-endpoint (or
// FCWARM_TEST_S3_ENDPOINT); the region from --s3-region, AWS_REGION or "us-east-1". Everything the run writes
// to the repository goes under a fresh random prefix and is deleted at the end unless --keep.
#include <sys/stat.h>

#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "repo/object_store.hpp"
#include "repo/snapshot_repository.hpp"
#include "util/common.hpp"

using namespace fcwarm;
using namespace fcwarm::repo;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

[[noreturn]] void Die(const std::string& what, const Status& st) {
  std::fprintf(stderr, "repo_bench: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "repo_bench: %s\nusage: repo_bench --dir GEN_DIR [--repo URL] [--s3-endpoint URL] [--s3-region R] "
               "[--workers N] [--chunk-mib N] [--level N] [--keep]\n",
               why.c_str());
  std::exit(2);
}

double MiB(uint64_t b) { return static_cast<double>(b) / (1 << 20); }

uint64_t Allocated(const fs::path& dir) {
  uint64_t apparent = 0, allocated = 0;
  util::DiskUsage(dir, &apparent, &allocated);
  return allocated;
}

std::vector<SnapshotFile> FilesOf(const fs::path& dir) {
  std::vector<SnapshotFile> files;
  auto text = util::ReadFile(dir / "manifest.json");
  if (text.ok()) {
    json::error_code ec;
    json::value v = json::parse(*text, ec);
    if (ec || !v.is_object() || !v.get_object().contains("files")) {
      Die("manifest.json", Status::InvalidArgument("no files list"));
    }
    for (const auto& f : v.at("files").as_array()) {
      SnapshotFile s;
      s.name = std::string(f.at("name").as_string());
      s.size = f.at("size").to_number<uint64_t>();
      s.xxh3 = std::string(f.at("xxh3").as_string());
      files.push_back(s);
    }
    // manifest.json itself is part of the generation too.
    SnapshotFile m;
    m.name = "manifest.json";
    m.size = text->size();
    m.xxh3 = util::Xxh3Hex(*text);
    files.push_back(m);
    return files;
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    SnapshotFile s;
    s.name = e.path().filename().string();
    s.size = e.file_size();
    files.push_back(s);  // xxh3 "" : Publish computes it
  }
  return files;
}

std::string RandomHex(size_t n) {
  std::random_device rd;
  std::string s;
  while (s.size() < n) s += "0123456789abcdef"[rd() % 16];
  return s;
}

void PrintPublish(const char* label, const PublishStats& s) {
  std::printf("%-16s %8.0f ms  %7.1f MiB/s raw  chunks %llu (holes %llu, uploaded %llu, present %llu)  stored %.1f MiB "
              "uploaded, %.1f MiB present, manifest %llu B\n",
              label, s.ms, MiB(s.raw_bytes) / (s.ms / 1000), static_cast<unsigned long long>(s.chunks),
              static_cast<unsigned long long>(s.hole_chunks), static_cast<unsigned long long>(s.uploaded_chunks),
              static_cast<unsigned long long>(s.present_chunks), MiB(s.uploaded_bytes), MiB(s.present_bytes),
              static_cast<unsigned long long>(s.manifest_bytes));
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir;
  std::string url, endpoint, region;
  RepositoryOptions ro;
  ro.node = "bench";
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--dir") dir = next();
    else if (a == "--repo") url = next();
    else if (a == "--s3-endpoint") endpoint = next();
    else if (a == "--s3-region") region = next();
    else if (a == "--workers") ro.workers = static_cast<unsigned>(std::stoul(next()));
    else if (a == "--chunk-mib") ro.chunk_size = std::stoull(next()) << 20;
    else if (a == "--level") ro.zstd_level = std::stoi(next());
    else if (a == "--keep") keep = true;
    else Usage("unknown argument " + a);
  }
  if (dir.empty()) Usage("--dir is required");
  fs::path scratch = fs::temp_directory_path() / ("repo-bench-" + RandomHex(8));
  if (url.empty()) url = "file://" + (scratch / "repo").string();
  auto parsed = ParseRepositoryUrl(url);
  if (!parsed.ok()) Die("--repo", parsed.status());
  S3Options s3;
  if (parsed->kind == RepositoryUrl::Kind::kS3) {
    s3.endpoint = !endpoint.empty() ? endpoint : (std::getenv("FCWARM_TEST_S3_ENDPOINT") ? std::getenv("FCWARM_TEST_S3_ENDPOINT") : "");
    const char* env_region = std::getenv("AWS_REGION");
    s3.region = !region.empty() ? region : (env_region ? env_region : "us-east-1");
    auto c = CredentialsFromEnvironment();
    if (!c.ok()) Die("credentials", c.status());
    s3.credentials = *c;
  }
  auto store = OpenObjectStore(*parsed, s3);
  if (!store.ok()) Die("store", store.status());
  std::shared_ptr<ObjectStore> shared(std::move(*store));
  if (auto st = shared->Check(); !st.ok()) Die("store check", st);
  std::string prefix = (parsed->prefix.empty() ? "" : parsed->prefix + "/") + "bench-" + RandomHex(8);
  auto repo = SnapshotRepository::Create(shared, prefix, ro);
  if (!repo.ok()) Die("repository", repo.status());

  PublishRequest req;
  req.dir = dir;
  req.files = FilesOf(dir);
  req.repo_key = "bench";
  req.metadata_json = "{}";
  uint64_t raw = 0;
  for (const auto& f : req.files) raw += f.size;
  std::printf("generation %s: %zu files, %.1f MiB apparent, %.1f MiB allocated on disk\n", dir.c_str(),
              req.files.size(), MiB(raw), MiB(Allocated(dir)));
  std::printf("repository %s prefix %s: chunk %llu KiB, zstd level %d, %u workers\n", shared->Describe().c_str(),
              prefix.c_str(), static_cast<unsigned long long>(ro.chunk_size >> 10), ro.zstd_level, ro.workers);

  auto first = (*repo)->Publish(req);
  if (!first.ok()) Die("publish", first.status());
  PrintPublish("publish (cold)", first->stats);
  auto second = (*repo)->Publish(req);
  if (!second.ok()) Die("publish again", second.status());
  PrintPublish("publish (again)", second->stats);

  fs::path out = scratch / "fetched";
  auto fetched = (*repo)->Fetch(second->manifest, out);
  if (!fetched.ok()) Die("fetch", fetched.status());
  const auto& f = *fetched;
  std::printf("%-16s %8.0f ms  %7.1f MiB/s raw  chunks %llu (downloaded %llu)  %.1f MiB downloaded, %.1f MiB "
              "allocated on disk after the fetch\n",
              "fetch+verify", f.ms, MiB(f.raw_bytes) / (f.ms / 1000), static_cast<unsigned long long>(f.chunks),
              static_cast<unsigned long long>(f.downloaded_chunks), MiB(f.downloaded_bytes), MiB(Allocated(out)));
  const auto& s = first->stats;
  uint64_t stored = s.uploaded_bytes + s.present_bytes;
  std::printf("sizes: raw %.1f MiB, zero chunks skipped %.1f MiB (%.0f%%), non-zero %.1f MiB, stored %.1f MiB "
              "(%.1f%% of raw, %.2fx compression of the non-zero data)\n",
              MiB(s.raw_bytes), MiB(s.zero_bytes), 100.0 * s.zero_bytes / s.raw_bytes,
              MiB(s.raw_bytes - s.zero_bytes), MiB(stored), 100.0 * stored / s.raw_bytes,
              stored ? static_cast<double>(s.raw_bytes - s.zero_bytes) / stored : 0.0);

  if (!keep) {
    auto objects = shared->List(prefix + "/");
    if (objects.ok()) {
      for (const auto& o : *objects) (void)shared->Delete(o.key);
    }
  }
  util::RemoveTree(keep ? out : scratch);
  return 0;
}
