#include "coord/single_flight.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace fcwarm::coord {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::chrono::seconds kMinTtl{1};
constexpr std::chrono::seconds kMaxTtl{3600};
// Retry interval of a renewal that failed (etcd unreachable), while the lease may still be alive.
constexpr milliseconds kRenewRetry{250};

// Printable ASCII without spaces, 1..max bytes.
bool IsPrintableName(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

int64_t NsOf(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

milliseconds Since(Clock::time_point t) { return std::chrono::duration_cast<milliseconds>(Clock::now() - t); }

}  // namespace

std::string_view AcquireOutcomeName(AcquireOutcome outcome) {
  switch (outcome) {
    case AcquireOutcome::kAcquired:
      return "acquired";
    case AcquireOutcome::kBusy:
      return "busy";
    case AcquireOutcome::kStopped:
      return "stopped";
    case AcquireOutcome::kTimedOut:
      return "timed_out";
  }
  return "unknown";
}

// ---- BuildLock ----

BuildLock::BuildLock(std::shared_ptr<EtcdClient> client, std::string key, std::string node_id, Lease lease,
                     Clock::time_point granted_at, LostCallback on_lost)
    : client_(std::move(client)),
      key_(std::move(key)),
      node_id_(std::move(node_id)),
      lease_(lease),
      on_lost_(std::move(on_lost)),
      renewed_ns_(NsOf(granted_at)) {
  thread_ = std::thread([this] { KeepAliveLoop(); });
}

BuildLock::~BuildLock() {
  Status s = Release();
  if (!s.ok()) spdlog::warn("event=coord_release_failed key={} error=\"{}\"", key_, s.ToString());
  if (thread_.joinable()) thread_.join();
}

bool BuildLock::Expired() const {
  return NsOf(Clock::now()) - renewed_ns_.load(std::memory_order_acquire) >= lease_.ttl_s * 1'000'000'000;
}

bool BuildLock::lost() const {
  if (lost_.load(std::memory_order_acquire)) return true;
  if (released_.load(std::memory_order_acquire) || !Expired()) return false;
  // Latched: a renewal still in flight may succeed later, but another node may have taken over meanwhile.
  lost_.store(true, std::memory_order_release);
  return true;
}

Status BuildLock::ExpiredStatus(const Status& cause) const {
  std::string msg = "lock " + key_ + ": no renewal of the lease succeeded for its TTL (" +
                    std::to_string(lease_.ttl_s) + " s)";
  if (!cause.ok()) msg += ": " + cause.message();
  return Status::Unavailable(std::move(msg));
}

Status BuildLock::lost_reason() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!lost_reason_.ok()) return lost_reason_;
  }
  return lost() ? ExpiredStatus(Status::Ok()) : Status::Ok();
}

void BuildLock::MarkLost(Status why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!lost_reason_.ok() || released_.load(std::memory_order_relaxed)) return;  // reported already
    lost_reason_ = why;
    stopping_ = true;
    lost_.store(true, std::memory_order_release);
  }
  spdlog::warn("event=coord_lock_lost key={} node={} lease={} why=\"{}\"", key_, node_id_, lease_.id,
               why.message());
  if (on_lost_) on_lost_(why);
}

void BuildLock::KeepAliveLoop() {
  const milliseconds ttl = std::chrono::seconds(lease_.ttl_s);
  const milliseconds interval = std::max(milliseconds(200), ttl / 3);
  milliseconds wait = interval;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, wait, [this] { return stopping_; })) return;
    }
    const Clock::time_point sent = Clock::now();
    auto renewed = client_->KeepAliveOnce(lease_.id);
    if (renewed.ok()) {
      // Too late if a TTL passed since the previous renewal (or lost() said so meanwhile): etcd kept the
      // lease, but this node already counted it as lost.
      if (Expired() || lost()) {
        MarkLost(ExpiredStatus(Status::Ok()));
        return;
      }
      renewed_ns_.store(NsOf(sent), std::memory_order_release);
      if (lost_.load(std::memory_order_acquire)) {  // lost() latched between the check and the store
        MarkLost(ExpiredStatus(Status::Ok()));
        return;
      }
      wait = interval;
      // The lease lives; the key must still be this lease's (nobody deleted or replaced it).
      auto kv = client_->Get(key_);
      if (kv.ok() && !kv->has_value()) {
        MarkLost(Status::FailedPrecondition("lock " + key_ + ": the key was deleted"));
        return;
      }
      if (kv.ok() && (*kv)->lease != lease_.id) {
        MarkLost(Status::FailedPrecondition("lock " + key_ + ": the key now belongs to node '" +
                                            (*kv)->value + "'"));
        return;
      }
      continue;  // a failed read is retried with the next renewal
    }
    if (renewed.status().code() == StatusCode::kNotFound) {
      MarkLost(Status::FailedPrecondition("lock " + key_ + ": " + renewed.status().message()));
      return;
    }
    // etcd did not answer. The server counts the TTL from when it processed the last renewal, which was
    // after we sent it: once a TTL has passed since that send, the lease may be gone.
    if (lost()) {
      MarkLost(ExpiredStatus(renewed.status()));
      return;
    }
    spdlog::warn("event=coord_renew_failed key={} lease={} error=\"{}\"", key_, lease_.id,
                 renewed.status().message());
    // Retry soon, and wake when the TTL runs out so that MarkLost() is not late.
    const auto expires = Clock::time_point(std::chrono::nanoseconds(renewed_ns_.load())) + ttl;
    wait = std::clamp(std::chrono::duration_cast<milliseconds>(expires - Clock::now()) + milliseconds(1),
                      milliseconds(1), kRenewRetry);
  }
}

Status BuildLock::Release() {
  bool was_lost = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (released_.load(std::memory_order_relaxed)) return Status::Ok();
    was_lost = lost();  // latches a loss by time that the keepalive thread has not reported yet
    if (was_lost && lost_reason_.ok()) lost_reason_ = ExpiredStatus(Status::Ok());
    released_.store(true, std::memory_order_release);
    stopping_ = true;
  }
  cv_.notify_all();
  // From the LostCallback (on the keepalive thread) the thread is about to end; the destructor joins it.
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  Status s = client_->RevokeLease(lease_.id);
  if (s.ok() || s.code() == StatusCode::kNotFound) {
    if (!was_lost) spdlog::debug("event=coord_lock_released key={} node={}", key_, node_id_);
    return Status::Ok();
  }
  return s.WithContext("releasing lock " + key_ + " (the key disappears when its lease expires, within " +
                       std::to_string(lease_.ttl_s) + " s)");
}

// ---- SingleFlight ----

SingleFlight::SingleFlight(std::shared_ptr<EtcdClient> client, std::string prefix, std::string node_id,
                           SingleFlightOptions options)
    : client_(std::move(client)),
      prefix_(std::move(prefix)),
      node_id_(std::move(node_id)),
      options_(options) {}

Result<std::unique_ptr<SingleFlight>> SingleFlight::Create(std::shared_ptr<EtcdClient> client,
                                                           std::string key_prefix, std::string node_id,
                                                           SingleFlightOptions options) {
  if (!client) return Status::InvalidArgument("coordination: no etcd client");
  if (key_prefix.empty() || key_prefix.front() != '/' || key_prefix.back() != '/') {
    return Status::InvalidArgument("coordination: key prefix '" + key_prefix +
                                   "' must start and end with '/'");
  }
  if (!IsPrintableName(node_id, 253)) {
    return Status::InvalidArgument("coordination: node id '" + node_id +
                                   "' must be 1-253 printable ASCII characters without spaces");
  }
  if (options.poll_interval.count() <= 0) {
    return Status::InvalidArgument("coordination: poll_interval must be positive");
  }
  return std::unique_ptr<SingleFlight>(
      new SingleFlight(std::move(client), std::move(key_prefix), std::move(node_id), options));
}

Result<std::unique_ptr<SingleFlight>> SingleFlight::Create(const CoordinationConfig& config,
                                                           std::string node_id, SingleFlightOptions options,
                                                           EtcdClientOptions client_options) {
  auto client = EtcdClient::Create(config.endpoints, client_options);
  if (!client.ok()) return client.status();
  return Create(std::shared_ptr<EtcdClient>(std::move(client).value()), config.key_prefix, std::move(node_id),
                options);
}

Result<AcquireResult> SingleFlight::Acquire(std::string_view name, std::chrono::seconds lease_ttl,
                                            LostCallback on_lost) {
  const Clock::time_point start = Clock::now();
  if (!IsPrintableName(name, 512)) {
    return Status::InvalidArgument("lock name '" + std::string(name) +
                                   "' must be 1-512 printable ASCII characters without spaces");
  }
  if (lease_ttl < kMinTtl || lease_ttl > kMaxTtl) {
    return Status::InvalidArgument("lease_ttl " + std::to_string(lease_ttl.count()) +
                                   " s is out of range (1-3600 s)");
  }
  const std::string key = LockKey(name);
  AcquireResult out;
  // 1. A read first: a held lock costs no lease and no write.
  auto current = client_->Get(key);
  if (!current.ok()) return current.status().WithContext("lock " + key);
  if (current->has_value()) {
    out.holder = (*current)->value;
    out.waited = Since(start);
    return out;
  }
  // 2. A lease, then the key with it only if nobody created it meanwhile.
  const Clock::time_point granted_at = Clock::now();
  auto lease = client_->GrantLease(lease_ttl.count());
  if (!lease.ok()) return lease.status().WithContext("lock " + key);
  auto created = client_->CreateIfAbsent(key, node_id_, lease->id);
  if (!created.ok() || !created->created) {
    // The lease is not needed (and revoking it deletes the key if the create did happen unanswered).
    Status revoked = client_->RevokeLease(lease->id);
    if (!revoked.ok() && revoked.code() != StatusCode::kNotFound) {
      spdlog::warn("event=coord_revoke_failed key={} lease={} error=\"{}\"", key, lease->id,
                   revoked.ToString());
    }
    if (!created.ok()) return created.status().WithContext("lock " + key);
    out.holder = created->existing->value;
    out.waited = Since(start);
    return out;
  }
  spdlog::info("event=coord_lock_acquired key={} node={} lease={} ttl_s={}", key, node_id_, lease->id,
               lease->ttl_s);
  out.outcome = AcquireOutcome::kAcquired;
  out.lock.reset(new BuildLock(client_, key, node_id_, *lease, granted_at, std::move(on_lost)));
  out.waited = Since(start);
  return out;
}

Result<AcquireResult> SingleFlight::AcquireOrWait(std::string_view name, std::chrono::seconds lease_ttl,
                                                  Clock::time_point deadline,
                                                  const std::function<bool()>& should_stop,
                                                  LostCallback on_lost) {
  const Clock::time_point start = Clock::now();
  std::string holder;  // the holder last seen
  while (true) {
    if (should_stop && should_stop()) {
      AcquireResult out;
      out.outcome = AcquireOutcome::kStopped;
      out.holder = holder;
      out.waited = Since(start);
      return out;
    }
    auto r = Acquire(name, lease_ttl, on_lost);
    if (!r.ok()) return r.status();
    if (r->outcome == AcquireOutcome::kAcquired) {
      if (!holder.empty()) {
        spdlog::info("event=coord_lock_taken_over key={} node={} previous_holder={} waited_ms={}",
                     LockKey(name), node_id_, holder, Since(start).count());
      }
      r->holder = holder;
      r->waited = Since(start);
      return r;
    }
    holder = r->holder;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      r->outcome = AcquireOutcome::kTimedOut;
      r->waited = Since(start);
      return r;
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(options_.poll_interval, deadline - now));
  }
}

}  // namespace fcwarm::coord
