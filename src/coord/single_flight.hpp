// Private: one build per cluster (issue 16, §2). A node that is about to build the snapshot of a
// compatibility key takes an etcd lease-backed lock on the key first; the other nodes wait for the lock or
// for the published manifest instead of building too. A node that dies mid-build stops renewing its lease,
// etcd deletes the lock when the lease expires, and a waiting node takes over.
// docs/architecture.md, "Cluster coordination (etcd)".
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "coord/coordination_url.hpp"
#include "coord/etcd_client.hpp"
#include "fcwarm/status.hpp"

namespace fcwarm::coord {

/// Called once, on the lock's keepalive thread, when a held lock is lost (see BuildLock::lost()). It must
/// not block for long; it may call BuildLock::Release().
using LostCallback = std::function<void(const Status& why)>;

/// A held lock: the key `<prefix>locks/<name>` exists in etcd, attached to this lock's lease, with the
/// holder's node id as its value. A keepalive thread renews the lease every TTL/3 and checks that the key is
/// still this lease's. Release() (or the destructor) revokes the lease, which deletes the key at once.
///
/// The lock is *lost* when the lease expired or was revoked (the keepalive answer says so), when renewing
/// failed for a whole TTL (counted from the last renewal that succeeded, so lost() turns true no later than
/// etcd can expire the lease), or when the key vanished or belongs to another lease. Then lost() is true,
/// lost_reason() says why, the LostCallback runs, and renewals stop: a builder must stop treating the build
/// as its own (another node may be building it now).
///
/// Thread safety: every method may be called from any thread; Release() is idempotent.
class BuildLock {
 public:
  ~BuildLock();
  BuildLock(const BuildLock&) = delete;
  BuildLock& operator=(const BuildLock&) = delete;

  /// Stops the keepalive and revokes the lease, deleting the key. Ok when the lease is gone already (lost);
  /// Unavailable when etcd cannot be reached (the key then disappears when the lease expires, within TTL).
  Status Release();
  /// True once the lock is lost (never again false). Besides what the keepalive thread found, true as soon
  /// as a whole TTL passed since the last successful renewal was sent, even while a renewal is still in
  /// flight. After Release() it keeps the value it had.
  bool lost() const;
  /// Why the lock was lost; Ok while held (or after a plain Release()).
  Status lost_reason() const;
  /// The full etcd key, e.g. "/fcwarm/locks/<name>".
  const std::string& key() const { return key_; }
  /// The node id recorded as the holder.
  const std::string& node_id() const { return node_id_; }
  /// The lease's id.
  int64_t lease_id() const { return lease_.id; }
  /// The lease's TTL as granted (seconds).
  int64_t ttl_s() const { return lease_.ttl_s; }

 private:
  friend class SingleFlight;
  BuildLock(std::shared_ptr<EtcdClient> client, std::string key, std::string node_id, Lease lease,
            std::chrono::steady_clock::time_point granted_at, LostCallback on_lost);
  void KeepAliveLoop();
  void MarkLost(Status why);
  // True when a whole TTL passed since the last successful renewal was sent.
  bool Expired() const;
  Status ExpiredStatus(const Status& cause) const;

  const std::shared_ptr<EtcdClient> client_;
  const std::string key_;
  const std::string node_id_;
  const Lease lease_;
  const LostCallback on_lost_;
  mutable std::atomic<bool> lost_{false};  // latched by lost() too
  std::atomic<bool> released_{false};
  // Send time (steady clock, ns since its epoch) of the last renewal, or of the grant, that succeeded.
  std::atomic<int64_t> renewed_ns_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  Status lost_reason_;     // guarded by mu_; set once: when the loss is reported, or at Release()
  std::thread thread_;
};

/// What Acquire() and AcquireOrWait() ended with.
enum class AcquireOutcome {
  kAcquired,  ///< The lock is held: AcquireResult::lock is set.
  kBusy,      ///< Acquire(): another node holds the lock.
  kStopped,   ///< AcquireOrWait(): should_stop() returned true while another node held the lock.
  kTimedOut,  ///< AcquireOrWait(): the deadline passed while another node held the lock.
};

/// "acquired", "busy", "stopped", "timed_out".
std::string_view AcquireOutcomeName(AcquireOutcome outcome);

/// The result of Acquire() and AcquireOrWait().
struct AcquireResult {
  AcquireOutcome outcome = AcquireOutcome::kBusy;
  std::unique_ptr<BuildLock> lock;  // set exactly when outcome == kAcquired
  std::string holder;               // the node that held the lock when last seen ("" when it was never held)
  std::chrono::milliseconds waited{0};  // time spent in the call
};

/// Options of SingleFlight.
struct SingleFlightOptions {
  /// How often AcquireOrWait() looks at a held lock (and calls should_stop()). Default: 250 ms.
  std::chrono::milliseconds poll_interval{250};
};

/// Takes build locks in one etcd cluster on behalf of one node.
///
/// Lock names are compatibility keys (or any name of printable ASCII without spaces, at most 512 bytes);
/// the etcd key is `<prefix>locks/<name>`.
///
/// Thread safety: safe for concurrent use; several locks (of different names) may be held at once.
class SingleFlight {
 public:
  /// A coordinator over `client` for node `node_id` (printable ASCII without spaces, at most 253 bytes).
  /// \return InvalidArgument for a bad node id, key prefix or option.
  static Result<std::unique_ptr<SingleFlight>> Create(std::shared_ptr<EtcdClient> client,
                                                      std::string key_prefix, std::string node_id,
                                                      SingleFlightOptions options = {});
  /// A coordinator with its own client of the cluster `config` names (ParseCoordinationUrl()).
  static Result<std::unique_ptr<SingleFlight>> Create(const CoordinationConfig& config, std::string node_id,
                                                      SingleFlightOptions options = {},
                                                      EtcdClientOptions client_options = {});

  /// Takes the lock `name` if no node holds it, without waiting: kAcquired with the lock, or kBusy with the
  /// holder. `lease_ttl` is the time (1 s to 1 h) after which a holder that stopped renewing (a dead node)
  /// loses the lock; etcd may round it up (to 2 s on a one-member cluster).
  /// \return InvalidArgument for a bad name or TTL; Unavailable (or the server's error) when etcd fails.
  Result<AcquireResult> Acquire(std::string_view name, std::chrono::seconds lease_ttl,
                                LostCallback on_lost = {});

  /// Takes the lock `name`, waiting while another node holds it: polls every poll_interval until the lock is
  /// free (its holder released it or died and its lease expired: kAcquired), `should_stop` returns true
  /// (kStopped; e.g. "the holder's manifest was published"), or `deadline` passes (kTimedOut). should_stop is
  /// called before each attempt, the first one included, so it also ends a wait that has not begun; it may
  /// be empty. After kAcquired a caller should still check once whether the work was done meanwhile (a
  /// holder may publish and release between two polls).
  /// \return as Acquire(); an etcd error ends the wait at once.
  Result<AcquireResult> AcquireOrWait(std::string_view name, std::chrono::seconds lease_ttl,
                                      std::chrono::steady_clock::time_point deadline,
                                      const std::function<bool()>& should_stop, LostCallback on_lost = {});

  /// The etcd key of the lock `name`.
  std::string LockKey(std::string_view name) const { return prefix_ + "locks/" + std::string(name); }
  /// This node's id.
  const std::string& node_id() const { return node_id_; }

 private:
  SingleFlight(std::shared_ptr<EtcdClient> client, std::string prefix, std::string node_id,
               SingleFlightOptions options);

  const std::shared_ptr<EtcdClient> client_;
  const std::string prefix_;
  const std::string node_id_;
  const SingleFlightOptions options_;
};

}  // namespace fcwarm::coord
