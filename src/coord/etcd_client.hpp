// Private: a small etcd v3 client over etcd's JSON gRPC gateway (HTTP/1.1 + JSON, libcurl + Boost.JSON).
//
// Debian 12 packages no C++ etcd client; every etcd v3 server (3.4 here) serves the same API as JSON on its
// client port (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`, ...), with keys and values in base64 and
// 64-bit integers as decimal strings. Only what cluster coordination needs is here: leases, a read, a put, a
// delete and the create-if-absent transaction of a lock. docs/architecture.md, "Cluster coordination (etcd)".
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coord/coordination_url.hpp"
#include "fcwarm/status.hpp"

namespace fcwarm::coord {

/// Timeouts of EtcdClient.
struct EtcdClientOptions {
  /// Connecting to one endpoint; past it the next endpoint is tried. Default: 1 s.
  std::chrono::milliseconds connect_timeout{1000};
  /// A whole request (connect + answer) to one endpoint. Default: 3 s.
  std::chrono::milliseconds request_timeout{3000};
};

/// One key as etcd stores it.
struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;  // 0: the key is attached to no lease
};

/// A granted lease.
struct Lease {
  int64_t id = 0;
  int64_t ttl_s = 0;  // as granted: etcd may round a short TTL up (to 2 s on a one-member cluster)
};

/// The outcome of CreateIfAbsent().
struct CreateResult {
  bool created = false;              // true: the key did not exist and now holds the value
  int64_t revision = 0;              // the store's revision after the transaction
  std::optional<KeyValue> existing;  // when !created: the key as it was (its holder)
};

/// A client of one etcd cluster.
///
/// Every call is one HTTP request with bounded timeouts (EtcdClientOptions). A call goes to the endpoint
/// that answered last; when it cannot be reached (connection refused or timed out, unknown host) the next
/// endpoint is tried. A request that reached a server but got no answer is retried on another endpoint only
/// when repeating it is harmless (reads, lease calls); a write (put, delete, transaction) is not, and
/// reports Unavailable.
///
/// Errors: Unavailable naming every endpoint tried and why ("etcd unreachable: 127.0.0.1:2379: Connection
/// refused"); an error the server reports (the gateway's `{"code", "message"}` body) keeps etcd's message
/// and maps the gRPC code (NOT_FOUND → NotFound, INVALID_ARGUMENT → InvalidArgument, UNAVAILABLE →
/// Unavailable, ...); an answer that is not the expected JSON is Internal.
///
/// Thread safety: safe for concurrent use; each call uses its own curl handle (idle handles are kept for
/// their open connection).
class EtcdClient {
 public:
  /// A client of the cluster reachable at `endpoints`.
  /// \return InvalidArgument when `endpoints` is empty or a timeout is not positive.
  static Result<std::unique_ptr<EtcdClient>> Create(std::vector<EtcdEndpoint> endpoints,
                                                    EtcdClientOptions options = {});
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  /// The endpoints, in the order given.
  const std::vector<EtcdEndpoint>& endpoints() const { return endpoints_; }

  /// Grants a lease of `ttl_s` seconds (> 0). Keys put with it are deleted when it expires or is revoked.
  Result<Lease> GrantLease(int64_t ttl_s);
  /// Renews a lease once; returns its TTL from now (seconds). NotFound when it expired or was revoked.
  Result<int64_t> KeepAliveOnce(int64_t lease_id);
  /// Revokes a lease, deleting its keys. NotFound when it expired or was revoked already.
  Status RevokeLease(int64_t lease_id);

  /// Reads one key; nullopt when it does not exist.
  Result<std::optional<KeyValue>> Get(std::string_view key);
  /// Puts a key (attached to `lease_id` unless 0); returns the store's revision after the put.
  Result<int64_t> Put(std::string_view key, std::string_view value, int64_t lease_id = 0);
  /// Deletes one key; returns the number of keys deleted (0 or 1).
  Result<int64_t> Delete(std::string_view key);
  /// One transaction: if `key` does not exist (create_revision == 0), put `value` attached to `lease_id`
  /// (unless 0); otherwise read it. Exactly one of concurrent callers creates the key.
  Result<CreateResult> CreateIfAbsent(std::string_view key, std::string_view value, int64_t lease_id);

 private:
  EtcdClient(std::vector<EtcdEndpoint> endpoints, EtcdClientOptions options);
  // POSTs `body` to `path` ("/v3/kv/range"); the answer's JSON text on HTTP 200.
  Result<std::string> Call(const std::string& path, const std::string& body, bool idempotent);
  Result<std::string> CallOne(void* curl, const EtcdEndpoint& ep, const std::string& path,
                              const std::string& body, bool* connect_failed);
  void* TakeHandle();
  void ReturnHandle(void* curl);

  const std::vector<EtcdEndpoint> endpoints_;
  const EtcdClientOptions options_;
  std::atomic<size_t> preferred_{0};  // index of the endpoint that answered last
  std::mutex mu_;
  std::vector<void*> idle_;  // idle CURL* handles (guarded by mu_)
};

}  // namespace fcwarm::coord
