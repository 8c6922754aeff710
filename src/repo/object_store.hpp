// Private: the object stores a snapshot repository lives in (docs/architecture.md, "Snapshot repository").
//
// An ObjectStore is a flat namespace of keys ("a/b/c", validated by ValidateKey) holding byte strings, with the
// five operations a repository needs: Put, Get, Head, List and Delete. Two implementations:
//   - S3ObjectStore: any S3 API endpoint (Ceph RADOS Gateway, MinIO, AWS) through libcurl, path-style URLs
//     ENDPOINT/BUCKET/KEY, signed by libcurl's own SigV4 (CURLOPT_AWS_SIGV4) plus an x-amz-content-sha256 header;
//   - DirObjectStore: a directory (file:///path), for a shared file system and for tests; a key is a relative
//     path below the root, written atomically (a unique temporary file, fsync, rename).
// ParseRepositoryUrl() reads "s3://BUCKET/PREFIX" and "file:///abs/dir"; OpenObjectStore() makes the store.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::repo {

/// The code of a refused request (S3 403: a wrong key id or secret, a bad signature, a missing grant).
/// fcwarm's StatusCode has no PermissionDenied; FailedPrecondition (HTTP 409) says "the configuration does not
/// allow this", and the message always starts with "permission denied:" and names the S3 error code and bucket.
inline constexpr StatusCode kPermissionDenied = StatusCode::kFailedPrecondition;

/// One object of a listing.
struct ObjectInfo {
  std::string key;                ///< Full key.
  uint64_t size = 0;              ///< Stored size in bytes.
  int64_t last_modified_ms = 0;   ///< Last modification, Unix milliseconds (0 when the store did not say).
};

/// What Head() found.
struct ObjectHead {
  bool exists = false;  ///< False when no object has the key.
  uint64_t size = 0;    ///< Stored size in bytes (when exists).
};

/// Checks a key: 1 to 1024 bytes of printable ASCII except '\\', segments separated by single '/', no empty
/// segment (no leading or trailing '/', no "//"), no "." or ".." segment, nothing containing ".fcwarm-tmp."
/// (DirObjectStore's temporary files). InvalidArgument naming the key and the rule otherwise.
Status ValidateKey(std::string_view key);

/// \brief A flat store of byte strings by key.
///
/// Thread safety: every method may be called from any thread concurrently (both implementations are safe).
/// Keys are validated by ValidateKey() in every method (InvalidArgument).
class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  /// Stores `bytes` under `key`, replacing any object there. A reader sees the old or the new object, never a
  /// part of one.
  virtual Status Put(const std::string& key, std::string_view bytes) = 0;
  /// The object's bytes; NotFound when there is none ("object KEY not found in <Describe()>").
  virtual Result<std::string> Get(const std::string& key) = 0;
  /// Whether the object exists, and its size.
  virtual Result<ObjectHead> Head(const std::string& key) = 0;
  /// Every object whose key starts with `prefix` (a plain string prefix, "" for all), sorted by key (bytewise).
  /// Paginated internally: the whole listing is returned.
  virtual Result<std::vector<ObjectInfo>> List(const std::string& prefix) = 0;
  /// Removes the object; removing a missing object is Ok.
  virtual Status Delete(const std::string& key) = 0;
  /// A cheap request that proves the store is usable (S3: the bucket exists and the credentials are accepted;
  /// a directory: it exists and is writable). The error says why not.
  virtual Status Check() = 0;
  /// "s3://BUCKET at ENDPOINT" or "file:///dir", for messages.
  virtual std::string Describe() const = 0;
};

/// \brief S3 credentials (the static kind; no instance metadata, no STS calls).
struct S3Credentials {
  std::string access_key_id;      ///< AWS_ACCESS_KEY_ID.
  std::string secret_access_key;  ///< AWS_SECRET_ACCESS_KEY.
  std::string session_token;      ///< AWS_SESSION_TOKEN; "" for none (sent as x-amz-security-token).
};

/// Credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (both required, non-empty) and the optional
/// AWS_SESSION_TOKEN. NotFound naming the missing variable.
Result<S3Credentials> CredentialsFromEnvironment();

/// Credentials from an AWS shared credentials file (the INI format of ~/.aws/credentials):
///
///     [default]
///     aws_access_key_id = AKIA...
///     aws_secret_access_key = ...
///     aws_session_token = ...        (optional)
///
/// `profile` selects the section ("default" unless given). '#' and ';' start comment lines; keys and values
/// are trimmed; other keys are ignored. NotFound for a missing file or profile, InvalidArgument (naming the
/// file, line or key) for a malformed line or a missing key.
Result<S3Credentials> CredentialsFromFile(const std::filesystem::path& path, const std::string& profile = "default");

/// \brief Settings of an S3ObjectStore.
struct S3Options {
  /// Base URL of the S3 API, "http://127.0.0.1:7480" or "https://s3.example.com" (no path, no query).
  /// Required.
  std::string endpoint;
  /// Bucket name (S3 naming rules, see ParseRepositoryUrl). Required.
  std::string bucket;
  /// Region in the SigV4 scope. Default: "us-east-1" (what RGW and MinIO accept unless configured otherwise).
  std::string region = "us-east-1";
  /// Credentials. Required (an empty key id or secret is InvalidArgument).
  S3Credentials credentials;
  /// Time to establish a TCP (and TLS) connection. Default: 5 s.
  std::chrono::milliseconds connect_timeout{5000};
  /// Time for a whole request. Default: 120 s (a 4 MiB chunk over a slow link).
  std::chrono::milliseconds request_timeout{120000};
  /// A request whose transfer stays under 1 KiB/s for this long is abandoned. Default: 30 s.
  std::chrono::milliseconds low_speed_time{30000};
  /// ListObjectsV2 page size (1..1000). Default: 1000 (S3's maximum; tests use small pages).
  int max_keys = 1000;
  /// Retries of a request that failed with a 5xx reply or a dropped connection (not a refused connection or a
  /// timeout). Default: 2.
  int retries = 2;
  /// Verify the TLS peer for https endpoints. Default: true.
  bool verify_tls = true;
};

/// \brief An S3 API bucket through libcurl (see the file comment).
///
/// Thread safety: safe for concurrent use; each request takes a curl handle from a small pool (handles and their
/// connections are reused, never shared by two requests at once).
class S3ObjectStore final : public ObjectStore {
 public:
  /// Checks the options (endpoint scheme http/https with a host, bucket name, credentials, max_keys) and makes
  /// the store; no request is sent (Check() sends one). InvalidArgument naming the field.
  static Result<std::unique_ptr<S3ObjectStore>> Create(S3Options options);
  ~S3ObjectStore() override;

  Status Put(const std::string& key, std::string_view bytes) override;
  Result<std::string> Get(const std::string& key) override;
  Result<ObjectHead> Head(const std::string& key) override;
  Result<std::vector<ObjectInfo>> List(const std::string& prefix) override;
  Status Delete(const std::string& key) override;
  Status Check() override;
  std::string Describe() const override;

  /// The URL of an object ("ENDPOINT/BUCKET/KEY" with the key percent-encoded as SigV4 requires).
  std::string ObjectUrl(const std::string& key) const;

  struct Impl;  ///< Private implementation.

 private:
  explicit S3ObjectStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// \brief A directory used as an object store (see the file comment).
///
/// Keys map to files below the root ("a/b" → ROOT/a/b); parent directories are created as needed and never
/// removed (so a concurrent Put never loses its directory). Put writes "<file>.fcwarm-tmp.<pid>.<n>", fsyncs it,
/// renames it into place and fsyncs the directory; List skips such temporary files.
///
/// Thread safety: safe for concurrent use, also by several processes or hosts sharing the directory.
class DirObjectStore final : public ObjectStore {
 public:
  /// Makes a store at `root` (an absolute path), creating the directory if needed.
  static Result<std::unique_ptr<DirObjectStore>> Open(const std::filesystem::path& root);

  Status Put(const std::string& key, std::string_view bytes) override;
  Result<std::string> Get(const std::string& key) override;
  Result<ObjectHead> Head(const std::string& key) override;
  Result<std::vector<ObjectInfo>> List(const std::string& prefix) override;
  Status Delete(const std::string& key) override;
  Status Check() override;
  std::string Describe() const override;

  /// The file that holds a key.
  std::filesystem::path PathOf(const std::string& key) const { return root_ / key; }

 private:
  explicit DirObjectStore(std::filesystem::path root) : root_(std::move(root)) {}
  std::filesystem::path root_;
};

/// \brief A parsed repository URL.
struct RepositoryUrl {
  /// Which store.
  enum class Kind { kS3, kDir };
  Kind kind = Kind::kDir;  ///< The scheme: s3:// or file://.
  std::string bucket;      ///< kS3: the bucket.
  std::string prefix;      ///< kS3: the key prefix inside the bucket, without leading or trailing '/' ("" for none).
  std::string path;        ///< kDir: the absolute directory, without a trailing '/'.
  /// The URL again, normalised ("s3://bucket/prefix", "file:///dir").
  std::string ToString() const;
};

/// Parses "s3://BUCKET[/PREFIX]" or "file:///ABSOLUTE/DIR". InvalidArgument naming the URL and the rule for: an
/// empty URL or another scheme, a missing bucket, a bucket name breaking S3's rules (3 to 63 characters of
/// a-z 0-9 . -, starting and ending with a letter or digit, no "..", not an IPv4 address, no "xn--" prefix or
/// "-s3alias" suffix), a prefix with an empty, "." or ".." segment or a character ValidateKey refuses, a
/// "file://HOST/..." or relative file path, a "." or ".." segment or a '%' (percent-encoding is not supported) in
/// a file path.
Result<RepositoryUrl> ParseRepositoryUrl(std::string_view url);

/// Makes the store a parsed URL names: a DirObjectStore for file://, an S3ObjectStore for s3:// from `s3` (whose
/// bucket is replaced by the URL's). The repository prefix of an s3:// URL is `url.prefix` (give it to
/// SnapshotRepository); a file:// store's prefix is "".
Result<std::unique_ptr<ObjectStore>> OpenObjectStore(const RepositoryUrl& url, S3Options s3 = {});

}  // namespace fcwarm::repo
