#include "core/shared_snapshots.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>

#include "coord/coordination_url.hpp"
#include "coord/single_flight.hpp"
#include "repo/object_store.hpp"
#include "repo/snapshot_repository.hpp"
#include "util/common.hpp"

namespace fcwarm::internal {
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "fcwarm-node";
  return buf;
}

// A repository generation known only by its reference (GC's report names no more).
RepositoryGeneration GenerationOf(const repo::GenerationRef& ref) {
  RepositoryGeneration g;
  g.repo_key = ref.repo_key;
  g.generation = ref.generation;
  return g;
}

std::string Kib(uint64_t bytes) { return std::to_string((bytes + 1023) / 1024) + " KiB"; }

}  // namespace

Result<std::unique_ptr<SharedSnapshots>> SharedSnapshots::Create(const SnapshotManagerOptions& opts) {
  const auto& r = opts.repository;
  const auto& c = opts.coordination;
  if (r.url.empty() && !r.s3_endpoint.empty()) {
    return Status::InvalidArgument("repository.s3_endpoint: given without a repository url (s3://BUCKET/PREFIX)");
  }
  if (r.url.empty() && c.url.empty()) return std::unique_ptr<SharedSnapshots>();
  std::unique_ptr<SharedSnapshots> s(new SharedSnapshots(opts));
  s->node_id_ = opts.node_id.empty() ? HostName() : opts.node_id;
  if (auto st = repo::SnapshotRepository::ValidateNodeId(s->node_id_); !st.ok()) {
    return st.WithContext("node_id '" + s->node_id_.substr(0, 64) + "'");
  }
  if (!r.url.empty()) {
    auto url = repo::ParseRepositoryUrl(r.url);
    if (!url.ok()) return url.status().WithContext("repository.url");
    repo::S3Options s3;
    if (url->kind == repo::RepositoryUrl::Kind::kS3) {
      if (r.s3_endpoint.empty()) {
        return Status::InvalidArgument("repository.s3_endpoint: required for the repository " + r.url +
                                       " (e.g. http://127.0.0.1:7480)");
      }
      s3.endpoint = r.s3_endpoint;
      if (!r.s3_region.empty()) s3.region = r.s3_region;
      auto creds = r.credentials_file.empty() ? repo::CredentialsFromEnvironment()
                                              : repo::CredentialsFromFile(r.credentials_file);
      if (!creds.ok()) {
        return creds.status().WithContext(r.credentials_file.empty() ? "repository credentials"
                                                                     : "repository.credentials_file");
      }
      s3.credentials = *creds;
    } else if (!r.s3_endpoint.empty()) {
      return Status::InvalidArgument("repository.s3_endpoint: only for an s3:// repository, not " + r.url);
    }
    auto store = repo::OpenObjectStore(*url, s3);
    if (!store.ok()) return store.status().WithContext("repository");
    repo::RepositoryOptions ro;
    ro.node = s->node_id_;
    ro.workers = r.workers;
    auto repository = repo::SnapshotRepository::Create(std::shared_ptr<repo::ObjectStore>(std::move(*store)),
                                                       url->kind == repo::RepositoryUrl::Kind::kS3 ? url->prefix
                                                                                                   : "",
                                                       ro);
    if (!repository.ok()) return repository.status().WithContext("repository");
    s->repo_ = std::move(*repository);
  }
  if (!c.url.empty()) {
    if (c.lock_ttl < std::chrono::seconds(1) || c.lock_ttl > std::chrono::hours(1)) {
      return Status::InvalidArgument("coordination.lock_ttl: must be between 1 s and 1 h");
    }
    auto cfg = coord::ParseCoordinationUrl(c.url);
    if (!cfg.ok()) return cfg.status().WithContext("coordination.url");
    auto sf = coord::SingleFlight::Create(*cfg, s->node_id_);
    if (!sf.ok()) return sf.status().WithContext("coordination");
    s->single_flight_ = std::move(*sf);
  }
  return s;
}

SharedSnapshots::SharedSnapshots(SnapshotManagerOptions opts) : opts_(std::move(opts)) {}
SharedSnapshots::~SharedSnapshots() = default;

std::string SharedSnapshots::RepoKey(const std::string& compatibility_key, const RuntimeImage& image,
                                     const std::vector<std::string>& preload) {
  std::string canon = "format=1\ncompatibility=" + compatibility_key + "\ncheck=" + image.runtime_check.kind + "\n";
  std::vector<std::string> sorted = preload;
  std::sort(sorted.begin(), sorted.end());
  for (const auto& p : sorted) canon += "preload=" + p + "\n";
  // Readable prefix (the compatibility key) + what else must match; [0-9a-f-] only (a valid repository key and
  // etcd lock name).
  return compatibility_key + "-" + util::Xxh3Hex(canon).substr(0, 16);
}

ObtainResult SharedSnapshots::Obtain(const std::string& snapshot_id, const std::string& repo_key, const fs::path& dir,
                                     const std::function<bool()>& stopping,
                                     const std::function<void(SharedEvent)>& emit) {
  ObtainResult out;
  const bool fetching = repo_ && opts_.repository.fetch;
  if (single_flight_) {
    auto start = Clock::now();
    auto last_look = Clock::time_point{};
    bool published = false;
    // Ends the wait when the holder's generation shows up in the repository (looked for once a second).
    auto should_stop = [&]() -> bool {
      if (stopping()) return true;
      if (!fetching) return false;
      if (Clock::now() - last_look < std::chrono::seconds(1)) return false;
      last_look = Clock::now();
      published = repo_->FindLatest(repo_key).ok();
      return published;
    };
    auto got = single_flight_->AcquireOrWait(repo_key, opts_.coordination.lock_ttl,
                                             Clock::now() + opts_.coordination.wait_for_build, should_stop);
    double waited = util::MsSince(start);
    if (!got.ok()) {
      emit({"coordination_unavailable",
            "etcd " + opts_.coordination.url + ": " + got.status().ToString() + "; building here without the lock",
            {}});
    } else if (got->outcome == coord::AcquireOutcome::kAcquired) {
      out.lock = std::move(got->lock);
      if (!got->holder.empty() && got->holder != node_id_) {
        out.timings["wait_for_build"] = waited;
        emit({"waited", "node " + got->holder + " held the build lock; it is free now", {{"wait", waited}}});
      }
    } else if (got->outcome == coord::AcquireOutcome::kStopped) {
      if (stopping()) return out;
      // An empty holder: the generation was published before anyone had to wait (no lock taken at all).
      if (!got->holder.empty()) {
        out.timings["wait_for_build"] = waited;
        emit({"waited", "node " + got->holder + " built it; its generation is published", {{"wait", waited}}});
      }
    } else {
      out.timings["wait_for_build"] = waited;
      emit({"wait_timed_out",
            "node " + got->holder + " still holds the build lock after " + std::to_string(int(waited / 1000)) +
                " s; building here too",
            {{"wait", waited}}});
    }
  }
  if (!fetching || stopping()) return out;
  auto manifest = repo_->FindLatest(repo_key);
  if (!manifest.ok()) {
    if (manifest.status().code() != StatusCode::kNotFound) {
      emit({"repository_unavailable",
            repo_->Describe() + ": " + manifest.status().ToString() + "; building here", {}});
    }
    return out;
  }
  {
    std::lock_guard lock(mu_);
    auto it = in_use_.find(snapshot_id);
    if (it != in_use_.end() && it->second.second == manifest->generation) {
      emit({"fetch_skipped",
            "generation " + manifest->generation + " is the one this snapshot is rebuilt from; building here", {}});
      return out;
    }
  }
  auto start = Clock::now();
  auto fetched = repo_->Fetch(*manifest, dir);
  double ms = util::MsSince(start);
  if (!fetched.ok()) {
    emit({"fetch_failed",
          "generation " + manifest->generation + " (node " + manifest->node + "): " + fetched.status().ToString() +
              "; building here",
          {{"fetch", ms}}});
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) fs::remove_all(e.path(), ec);
    return out;
  }
  out.fetched = true;
  out.metadata_json = manifest->metadata_json;
  out.generation = manifest->generation;
  out.built_by = manifest->node;
  out.timings["fetch"] = ms;
  emit({"fetched",
        "generation " + manifest->generation + " built by node " + manifest->node + ": " +
            Kib(fetched->downloaded_bytes) + " downloaded for " + Kib(fetched->raw_bytes) + " (" +
            Kib(fetched->zero_bytes) + " holes)",
        {{"fetch", ms}}});
  return out;
}

void SharedSnapshots::Publish(const std::string& repo_key, const std::string& snapshot_id, const fs::path& dir,
                              const std::vector<SnapshotFile>& files, const std::string& metadata_json,
                              const std::function<void(SharedEvent)>& emit) {
  if (!repo_ || !opts_.repository.publish) return;
  repo::PublishRequest req;
  req.dir = dir;
  req.files = files;
  req.repo_key = repo_key;
  req.metadata_json = metadata_json;
  auto start = Clock::now();
  auto r = repo_->Publish(req);
  double ms = util::MsSince(start);
  if (!r.ok()) {
    emit({"publish_failed", repo_->Describe() + ": " + r.status().ToString(), {{"publish", ms}}});
    return;
  }
  const auto& st = r->stats;
  emit({"published",
        "generation " + r->manifest.generation + ": " + Kib(st.raw_bytes) + " in " + std::to_string(st.chunks) +
            " chunks (" + Kib(st.zero_bytes) + " holes), " + Kib(st.uploaded_bytes) + " uploaded, " +
            std::to_string(st.present_chunks) + " chunks already there",
        {{"publish", ms}}});
  NoteInUse(snapshot_id, repo_key, r->manifest.generation);
}

void SharedSnapshots::NoteInUse(const std::string& snapshot_id, const std::string& repo_key,
                                const std::string& generation) {
  {
    std::lock_guard lock(mu_);
    in_use_[snapshot_id] = {repo_key, generation};
  }
  RecordUse();
}

void SharedSnapshots::Forget(const std::string& snapshot_id) {
  {
    std::lock_guard lock(mu_);
    if (in_use_.erase(snapshot_id) == 0) return;
  }
  RecordUse();
}

void SharedSnapshots::RecordUse() {
  if (!repo_) return;
  std::vector<repo::GenerationRef> refs;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, ref] : in_use_) refs.push_back({ref.first, ref.second});
  }
  if (auto st = repo_->RecordNodeUse(node_id_, refs); !st.ok()) {
    spdlog::warn("snapshot repository: cannot record what node {} uses: {}", node_id_, st.ToString());
  }
}

Result<std::vector<RepositoryGeneration>> SharedSnapshots::List() {
  if (!repo_) return Status::FailedPrecondition("no snapshot repository is configured (--snapshot-repository)");
  auto gens = repo_->ListGenerations();
  if (!gens.ok()) return gens.status().WithContext(repo_->Describe());
  std::vector<RepositoryGeneration> out;
  for (const auto& g : *gens) {
    RepositoryGeneration r = GenerationOf(g.ref);
    if (auto m = repo_->Load(g.ref); m.ok()) {
      r.node = m->node;
      r.created_at = m->created_at_ms;
      r.raw_bytes = m->RawBytes();
      try {
        auto meta = json::parse(m->metadata_json).as_object();
        if (const auto* v = meta.if_contains("runtime_image"); v && v->is_string()) {
          r.runtime_image = std::string(v->as_string());
        }
      } catch (const std::exception&) {
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

Result<RepositoryGcReport> SharedSnapshots::Gc(const RepositoryGcOptions& options) {
  if (!repo_) return Status::FailedPrecondition("no snapshot repository is configured (--snapshot-repository)");
  repo::GcOptions go;
  go.keep_newest = options.keep_newest;
  go.keep_newer_than = options.keep_newer_than;
  go.dry_run = options.dry_run;
  RecordUse();  // this node's own record is fresh
  auto r = repo_->Gc(go);
  if (!r.ok()) return r.status().WithContext(repo_->Describe());
  RepositoryGcReport out;
  out.dry_run = r->dry_run;
  for (const auto& g : r->manifests_deleted) out.deleted.push_back(GenerationOf(g));
  for (const auto& g : r->manifests_kept) out.kept.push_back(GenerationOf(g));
  out.nodes = r->nodes_live;
  out.chunks_deleted = r->chunks_deleted;
  out.chunk_bytes_deleted = r->chunk_bytes_deleted;
  out.chunks_kept = r->chunks_kept;
  return out;
}

Status SharedSnapshots::Check() {
  if (repo_) {
    if (auto st = repo_->Check(); !st.ok()) return st.WithContext("snapshot repository " + opts_.repository.url);
  }
  if (single_flight_) {
    // A lock nobody takes: Acquire answers busy or acquired either way, or the error.
    auto got = single_flight_->Acquire("fcwarm-check-" + node_id_, opts_.coordination.lock_ttl);
    if (!got.ok()) return got.status().WithContext("coordination " + opts_.coordination.url);
  }
  return Status::Ok();
}

}  // namespace fcwarm::internal
