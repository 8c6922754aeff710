// Private: a repository of snapshot generations in an ObjectStore, shared by many nodes (docs/architecture.md,
// "Snapshot repository").
//
// Layout under the repository prefix P (P = "" or "a/b"; keys below are relative to it):
//   chunks/<d[0:2]>/<d>             one chunk: zstd frame of the raw bytes whose XXH3-128 is <d> (32 hex digits)
//   manifests/<repo key>/<gen>.json one published generation; written last, never modified
//   nodes/<node>.json               what a node uses (RecordNodeUse), read by Gc()
//
// Publish() splits every file into fixed-size chunks (RepositoryOptions::chunk_size, 4 MiB), records all-zero
// chunks as holes without storing them, addresses each other chunk by the XXH3-128 of its raw bytes, uploads the
// chunks the store does not hold yet (zstd level 3) with N workers, and writes the manifest after every chunk
// is stored: a reader finds a manifest only when all of its chunks are there. Fetch() writes the files back
// (holes and zero pages as holes), verifying every chunk after decompression and every whole file against the
// manifest. Gc() deletes manifests beyond a retention rule that no node record names, then the chunks no
// remaining manifest references.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"
#include "repo/object_store.hpp"

namespace fcwarm::repo {

/// Format version written in every manifest; Load refuses other versions.
inline constexpr int kManifestVersion = 1;

/// One chunk of a file in a manifest.
struct ChunkRef {
  /// XXH3-128 of the chunk's raw bytes (32 hex digits); "" for a hole (an all-zero chunk that is not stored).
  std::string digest;
  /// Bytes of the stored (compressed) object when the publisher wrote or found it; 0 for a hole. Informational:
  /// a concurrent publisher may have stored the same content at another compression level.
  uint64_t stored_size = 0;
  /// True for a hole.
  bool hole() const { return digest.empty(); }
};

/// One file of a manifest.
struct ManifestFile {
  std::string name;             ///< File name inside the generation directory (no '/').
  uint64_t size = 0;            ///< Size in bytes.
  std::string xxh3;             ///< XXH3-128 of the whole file (32 hex digits).
  uint64_t chunk_size = 0;      ///< Raw bytes per chunk; the last chunk holds the rest.
  std::vector<ChunkRef> chunks; ///< ceil(size / chunk_size) chunks in file order.
};

/// A published generation.
struct Manifest {
  int version = kManifestVersion;  ///< kManifestVersion.
  std::string repo_key;            ///< The repository key it was published under.
  std::string generation;          ///< Its id: unique and time-sortable ("20250102T030405678Z-1a2b3c4d").
  int64_t created_at_ms = 0;       ///< When it was published (Unix milliseconds).
  std::string node;                ///< The publishing node's id.
  std::string compression;         ///< "zstd".
  std::string metadata_json;       ///< The publisher's metadata, a JSON object (compatibility, images, shape...).
  std::vector<ManifestFile> files; ///< The files, in the publisher's order.
  /// Sum of the file sizes.
  uint64_t RawBytes() const;
};

/// The manifest's JSON text (one line and a newline).
std::string ManifestToJson(const Manifest& m);
/// Parses and checks a manifest: format and version, every field present with its type, digests of 32 hex
/// digits, names without '/', chunk counts matching the sizes. DataLoss naming `what` (the key) and the field.
Result<Manifest> ManifestFromJson(std::string_view text, std::string_view what);

/// \brief Settings of a SnapshotRepository.
struct RepositoryOptions {
  /// Raw bytes per chunk: the unit of de-duplication, of zero skipping, of parallel transfer and of what a
  /// worker holds in memory (twice). A multiple of 4096 in [64 KiB, 64 MiB]. Default: 4 MiB (large enough that
  /// per-object overhead of an S3 request stays small, small enough that a page-level change in a multi-GiB
  /// memory file costs one chunk).
  uint64_t chunk_size = 4u << 20;
  /// zstd level, 1..19. Default: 3 (zstd's default: ~3x faster than level 9 at a few percent larger output).
  int zstd_level = 3;
  /// Parallel transfers (Head/Put in Publish, Get in Fetch, deletes in Gc), 1..64. Default: 4.
  unsigned workers = 4;
  /// This node's id, recorded in manifests ([A-Za-z0-9._-], starting with a letter or digit, at most 128).
  /// Default: "" (InvalidArgument at Create: every publisher names itself).
  std::string node;
  /// Wall clock, Unix milliseconds (tests inject one). Default: the system clock.
  std::function<int64_t()> clock;
};

/// What to publish: a generation directory and its files as its manifest.json lists them.
struct PublishRequest {
  std::filesystem::path dir;          ///< The generation directory.
  std::vector<SnapshotFile> files;    ///< Files to publish (name, size, xxh3; mtime_ns ignored); not empty.
  std::string repo_key;               ///< Opaque key ([A-Za-z0-9._:-], starting with a letter or digit, <= 200).
  std::string metadata_json = "{}";   ///< A JSON object stored in the manifest as it is.
};

/// Counters of a Publish.
struct PublishStats {
  uint64_t raw_bytes = 0;              ///< Sum of the file sizes.
  uint64_t zero_bytes = 0;             ///< Raw bytes in holes (all-zero chunks, not stored).
  uint64_t chunks = 0;                 ///< Chunks, holes included.
  uint64_t hole_chunks = 0;            ///< All-zero chunks.
  uint64_t uploaded_chunks = 0;        ///< Chunks stored by this publish.
  uint64_t uploaded_bytes = 0;         ///< Stored (compressed) bytes of those.
  uint64_t uploaded_raw_bytes = 0;     ///< Raw bytes of those.
  uint64_t present_chunks = 0;         ///< Non-hole chunks the store held already (or repeated in this publish).
  uint64_t present_bytes = 0;          ///< Stored bytes of the distinct chunks the store held already.
  uint64_t manifest_bytes = 0;         ///< Size of the manifest.
  double ms = 0;                       ///< Wall time.
};

/// What Publish returns.
struct PublishResult {
  Manifest manifest;         ///< The manifest as written.
  std::string manifest_key;  ///< Its key in the store (with the repository prefix).
  PublishStats stats;        ///< Counters.
};

/// Counters of a Fetch.
struct FetchStats {
  uint64_t raw_bytes = 0;         ///< Sum of the file sizes.
  uint64_t zero_bytes = 0;        ///< Raw bytes of holes (not downloaded, left as holes).
  uint64_t chunks = 0;            ///< Chunks, holes included.
  uint64_t downloaded_chunks = 0; ///< Chunks downloaded.
  uint64_t downloaded_bytes = 0;  ///< Stored (compressed) bytes downloaded.
  double ms = 0;                  ///< Wall time (downloads, verification, writes).
};

/// A generation in the repository.
struct GenerationRef {
  std::string repo_key;    ///< Its repository key.
  std::string generation;  ///< Its id.
  /// Ordered by key, then id.
  bool operator<(const GenerationRef& o) const {
    return repo_key != o.repo_key ? repo_key < o.repo_key : generation < o.generation;
  }
  /// Equal key and id.
  bool operator==(const GenerationRef& o) const = default;
};

/// A manifest in a listing.
struct GenerationInfo {
  GenerationRef ref;              ///< Key and id.
  std::string manifest_key;       ///< Its key in the store.
  uint64_t manifest_bytes = 0;    ///< Size of the manifest object.
  int64_t last_modified_ms = 0;   ///< When the store wrote it.
};

/// Retention and safety settings of Gc().
struct GcOptions {
  /// Manifests kept per repository key, newest first. Default: 2.
  unsigned keep_newest = 2;
  /// Manifests younger than this are kept. Default: 24 h.
  std::chrono::milliseconds keep_newer_than{std::chrono::hours(24)};
  /// A node record older than this is ignored (its node is taken for gone; see RecordNodeUse). Default: 7 days.
  std::chrono::milliseconds node_record_ttl{std::chrono::hours(24 * 7)};
  /// An unreferenced chunk younger than this is kept: a Publish in progress has stored it and not yet written
  /// its manifest. Default: 1 h.
  std::chrono::milliseconds min_chunk_age{std::chrono::hours(1)};
  /// Report what would be deleted without deleting anything. Default: false.
  bool dry_run = false;
};

/// What Gc() did (or would do, in a dry run).
struct GcReport {
  bool dry_run = false;                            ///< GcOptions::dry_run.
  std::vector<GenerationRef> manifests_deleted;    ///< Manifests deleted (beyond retention, unused, or corrupt).
  std::vector<GenerationRef> manifests_kept;       ///< Manifests kept.
  std::vector<GenerationRef> corrupt_manifests;    ///< Manifests that did not parse or have a key Publish
                                                   ///< never writes (deleted unless in use).
  std::vector<std::string> nodes_live;             ///< Node records taken into account.
  std::vector<std::string> nodes_stale;            ///< Node records older than node_record_ttl (ignored).
  uint64_t chunks_deleted = 0;                     ///< Chunks deleted.
  uint64_t chunk_bytes_deleted = 0;                ///< Their stored bytes.
  uint64_t chunks_kept = 0;                        ///< Chunks still referenced (or too young to delete).
  uint64_t chunks_young = 0;                       ///< Unreferenced chunks kept for min_chunk_age.
};

/// \brief Snapshot generations in an object store (see the file comment).
///
/// Thread safety: every method may be called from any thread concurrently; several processes and hosts may share
/// one repository (content-addressed chunks are written idempotently; each manifest has a unique key). Gc() should
/// run from one place at a time (two at once delete nothing wrong, they only repeat each other's work).
class SnapshotRepository {
 public:
  /// Makes a repository at `prefix` ("" or a key without leading or trailing '/') of `store`. InvalidArgument
  /// naming the option for a bad prefix, chunk size, level, worker count or node id.
  static Result<std::unique_ptr<SnapshotRepository>> Create(std::shared_ptr<ObjectStore> store, std::string prefix,
                                                            RepositoryOptions options);
  ~SnapshotRepository();
  SnapshotRepository(const SnapshotRepository&) = delete;
  SnapshotRepository& operator=(const SnapshotRepository&) = delete;

  /// Publishes a generation directory (see the file comment). Errors: InvalidArgument for a bad request (key,
  /// names, metadata not a JSON object), FailedPrecondition when a file's size or XXH3 differs from the request
  /// (the directory changed), the store's error otherwise; no manifest is written then (chunks already stored
  /// stay, for Gc or the next publish).
  Result<PublishResult> Publish(const PublishRequest& request);

  /// The newest manifest of a repository key (by generation id). NotFound when there is none; DataLoss when the
  /// newest does not parse.
  Result<Manifest> FindLatest(const std::string& repo_key);
  /// One manifest.
  Result<Manifest> Load(const GenerationRef& ref);
  /// Every manifest of every key, sorted by key then generation id.
  Result<std::vector<GenerationInfo>> ListGenerations();

  /// Writes the manifest's files into `dest_dir` (created if missing; the files must not exist), verifying each
  /// chunk after decompression against its digest and each file's XXH3 against the manifest. A missing, unreadable
  /// or mismatching chunk is DataLoss naming the file, the chunk index and the digest; on any error the files
  /// written so far are removed (and `dest_dir` if Fetch created it). The files are not fsynced: the caller does
  /// that before it commits them.
  Result<FetchStats> Fetch(const Manifest& manifest, const std::filesystem::path& dest_dir);

  /// Records (replaces) the generations `node` uses (its ready snapshots that came from or went to this
  /// repository), with the current time: Gc() keeps them while the record is younger than
  /// GcOptions::node_record_ttl, so a node refreshes it at least that often.
  Status RecordNodeUse(const std::string& node, const std::vector<GenerationRef>& in_use);
  /// Removes a node's record (a node leaving the cluster).
  Status ForgetNode(const std::string& node);

  /// Deletes manifests that are beyond retention and named by no live node record, then the chunks no remaining
  /// manifest references (re-listing the manifests just before deleting chunks, and sparing chunks younger than
  /// min_chunk_age, so that a Publish in progress keeps its chunks). A node record that does not parse is
  /// DataLoss (nothing is deleted: what that node uses is unknown).
  Result<GcReport> Gc(const GcOptions& options);

  /// The store's Check().
  Status Check();
  /// The store.
  ObjectStore& store() { return *store_; }
  /// "<store> prefix P", for messages.
  std::string Describe() const;

  /// Keys (with the prefix) of a chunk, a manifest and a node record.
  std::string ChunkKey(const std::string& digest) const;
  /// \copydoc ChunkKey
  std::string ManifestKey(const GenerationRef& ref) const;
  /// \copydoc ChunkKey
  std::string NodeKey(const std::string& node) const;

  /// Checks a repository key ([A-Za-z0-9._:-], starting with a letter or digit, at most 200 bytes).
  static Status ValidateRepoKey(const std::string& key);
  /// Checks a node id ([A-Za-z0-9._-], starting with a letter or digit, at most 128 bytes).
  static Status ValidateNodeId(const std::string& node);

 private:
  SnapshotRepository(std::shared_ptr<ObjectStore> store, std::string prefix, RepositoryOptions options);
  int64_t Now() const;
  std::string NewGenerationId() const;

  std::shared_ptr<ObjectStore> store_;
  std::string base_;  // prefix + "/" or ""
  RepositoryOptions options_;
};

}  // namespace fcwarm::repo
