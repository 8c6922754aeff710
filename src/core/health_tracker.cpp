#include "fcwarm/health_tracker.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <thread>

#include "core/internal.hpp"
#include "fcwarm/ids.hpp"
#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "util/common.hpp"

namespace fcwarm {

class HealthTracker::Impl {
 public:
  Impl(Store& store, SnapshotManager& snapshots, HealthOptions opts)
      : store_(store), snapshots_(snapshots), opts_(opts) {
    token_ = snapshots_.AddBuildListener([this](const BuildOutcome& o) { OnBuild(o); });
    timer_ = std::thread([this] { TimerLoop(); });
  }
  ~Impl() {
    snapshots_.RemoveBuildListener(token_);
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    timer_.join();
  }

  Status RecordSuccess(const std::string& id, int64_t generation) {
    if (auto p = Id::Parse("runtime_snapshot_id", id); !p.ok()) return p.status();
    bool stale = false;
    auto st = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      if (detail::CountRestoreSuccess(db, id, generation, util::NowMillis())) return Status::Ok();
      auto current = detail::CurrentGeneration(db, id);
      if (!current.ok()) return current.status();
      stale = true;
      return Status::Ok();
    });
    if (st.ok() && stale) NoteStale(id, generation, "success");
    return st;
  }

  Status RecordFailure(const std::string& id, int64_t generation, const std::string& error) {
    if (auto p = Id::Parse("runtime_snapshot_id", id); !p.ok()) return p.status();
    bool crossed = false;
    bool stale = false;
    int64_t consecutive = 0;
    std::string image_id;
    auto st = detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
      if (!detail::CountRestoreFailure(db, id, generation, error, util::NowMillis())) {
        auto current = detail::CurrentGeneration(db, id);
        if (!current.ok()) return current.status();
        stale = true;
        return Status::Ok();
      }
      auto snap = detail::SnapshotById(db, id);
      if (!snap.ok()) return snap.status();
      consecutive = snap->consecutive_failures;
      image_id = snap->runtime_image_id;
      if (snap->state == SnapshotState::kReady && consecutive >= opts_.unhealthy_threshold) {
        crossed = detail::MarkUnhealthyIfReady(db, id);
        if (crossed) {
          Event e;
          e.kind = EventKind::kHealth;
          e.snapshot_id = id;
          e.runtime_image_id = image_id;
          e.outcome = "unhealthy";
          e.reason = "consecutive_failures";
          e.message = std::to_string(consecutive) + " consecutive failures; last: " + error;
          detail::InsertEvent(db, e);
        }
      }
      return Status::Ok();
    });
    if (!st.ok()) return st;
    if (stale) NoteStale(id, generation, "failure (" + error + ")");
    if (crossed) {
      spdlog::warn("snapshot {}: unhealthy after {} consecutive failures (last: {})", id, consecutive, error);
      if (opts_.auto_rebuild) TriggerRebuild(id);
    }
    return Status::Ok();
  }

  Status RecordIncompatible(const std::string& id, const std::string& detail) {
    auto snap = snapshots_.Get(id);
    if (!snap.ok()) return snap.status();
    Event e;
    e.kind = EventKind::kHealth;
    e.snapshot_id = id;
    e.runtime_image_id = snap->runtime_image_id;
    e.outcome = "stale";
    e.reason = "incompatible";
    e.message = detail;
    internal::Emit(store_, e);
    if (opts_.auto_rebuild) TriggerRebuild(id);
    return Status::Ok();
  }

  Result<HealthStats> Stats(const std::string& id) const {
    auto snap = snapshots_.Get(id);
    if (!snap.ok()) return snap.status();
    HealthStats s;
    s.state = snap->state;
    s.success_count = snap->success_count;
    s.failure_count = snap->failure_count;
    s.consecutive_failures = snap->consecutive_failures;
    s.build_failures = snap->build_failures;
    s.last_error = snap->last_error;
    s.last_used_at = snap->last_used_at;
    return s;
  }

  int64_t automatic_rebuilds() const { return rebuilds_.load(); }
  int64_t stale_outcomes() const { return stale_.load(); }
  int pending() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(pending_.size());
  }
  const HealthOptions& options() const { return opts_; }

 private:
  void NoteStale(const std::string& id, int64_t generation, const std::string& what) {
    stale_++;
    spdlog::info("snapshot {}: {} of retired generation {} does not count against the current one", id, what,
                 generation);
  }

  void TriggerRebuild(const std::string& id) {
    {
      std::lock_guard lock(mu_);
      pending_.erase(id);
    }
    if (snapshots_.RequestAutomaticRebuild(id)) {
      rebuilds_++;
      spdlog::info("snapshot {}: automatic rebuild scheduled", id);
    }
  }

  void OnBuild(const BuildOutcome& o) {
    if (o.ok) {
      std::lock_guard lock(mu_);
      pending_.erase(o.snapshot_id);
      return;
    }
    if (!opts_.auto_rebuild || o.build_failures <= 0) return;
    auto snap = snapshots_.Get(o.snapshot_id);
    if (!snap.ok() || snap->state == SnapshotState::kDeleted) return;
    // Capped exponential backoff: initial * 2^(failures-1).
    auto delay = opts_.rebuild_backoff_initial;
    for (int64_t i = 1; i < o.build_failures && delay < opts_.rebuild_backoff_max; ++i) delay *= 2;
    // A full disk: each attempt boots a build VM whose files fill it again (and can starve running VMs and
    // the store), so retry at the slowest pace at once; an operator who freed space rebuilds without waiting.
    if (o.code == StatusCode::kResourceExhausted) delay = opts_.rebuild_backoff_max;
    delay = std::min(delay, opts_.rebuild_backoff_max);
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      pending_[o.snapshot_id] = std::chrono::steady_clock::now() + delay;
    }
    cv_.notify_all();
    spdlog::info("snapshot {}: build failed {} time(s) in a row; next automatic rebuild in {} ms", o.snapshot_id,
                 o.build_failures, delay.count());
  }

  void TimerLoop() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      if (pending_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto next = pending_.begin();
      for (auto it = pending_.begin(); it != pending_.end(); ++it)
        if (it->second < next->second) next = it;
      if (std::chrono::steady_clock::now() < next->second) {
        cv_.wait_until(lock, next->second);
        continue;
      }
      std::string id = next->first;
      pending_.erase(next);
      lock.unlock();
      if (snapshots_.RequestAutomaticRebuild(id)) {
        rebuilds_++;
        spdlog::info("snapshot {}: automatic rebuild retried after backoff", id);
      }
      lock.lock();
    }
  }

  Store& store_;
  SnapshotManager& snapshots_;
  HealthOptions opts_;
  int token_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::chrono::steady_clock::time_point> pending_;
  bool stopping_ = false;
  std::atomic<int64_t> rebuilds_{0};
  std::atomic<int64_t> stale_{0};
  std::thread timer_;
};

HealthTracker::HealthTracker(Store& store, SnapshotManager& snapshots, HealthOptions options)
    : impl_(std::make_unique<Impl>(store, snapshots, options)) {}
HealthTracker::~HealthTracker() = default;
Status HealthTracker::RecordSuccess(const std::string& id, int64_t generation) {
  return impl_->RecordSuccess(id, generation);
}
Status HealthTracker::RecordFailure(const std::string& id, int64_t generation, const std::string& e) {
  return impl_->RecordFailure(id, generation, e);
}
Status HealthTracker::RecordIncompatible(const std::string& id, const std::string& d) {
  return impl_->RecordIncompatible(id, d);
}
Result<HealthStats> HealthTracker::Stats(const std::string& id) const { return impl_->Stats(id); }
int64_t HealthTracker::automatic_rebuilds() const { return impl_->automatic_rebuilds(); }
int64_t HealthTracker::stale_outcomes() const { return impl_->stale_outcomes(); }
int HealthTracker::pending_retries() const { return impl_->pending(); }
const HealthOptions& HealthTracker::options() const { return impl_->options(); }

}  // namespace fcwarm
