// Private: the pool of restored clones (RestoreOptions::pool) behind RestoreEngine. The pool keeps the
// bookkeeping (targets, clones, counters), runs one background thread that fills, expires and drains, and hands
// clones out after one agent ping. Everything that touches snapshots, the store or a VMM is a hook the engine
// supplies, so the logic is testable on its own.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fcwarm/restore_engine.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::internal {

/// A clone the pool holds (or hands out).
struct PoolClone {
  std::string vm_id;  // its record (state `pooled` while in the pool)
  std::string image_id;
  std::string snapshot_id;
  int64_t generation = 0;
  std::shared_ptr<Vm> vm;
  Timings timings;  // of the fill
  std::chrono::steady_clock::time_point ready;
  int64_t ready_at = 0;  // Unix ms
};

/// Where clones of an image must come from now.
struct PoolSource {
  bool ready = false;  // a ready snapshot: clones of (snapshot_id, generation) may be made and handed out
  std::string snapshot_id;
  int64_t generation = 0;
  std::string not_ready;  // discard reason when not ready: "rebuilt", "deleted", "unhealthy"
};

/// Proportional set size of a process in bytes (/proc/<pid>/smaps_rollup), or nullopt.
std::optional<uint64_t> ReadPssBytes(int pid);

class ClonePool {
 public:
  struct Hooks {
    /// The image id a configured name or id stands for; NotFound when none.
    std::function<Result<std::string>(const std::string& ref)> resolve;
    /// The snapshot clones of an image must be of.
    std::function<PoolSource(const std::string& image_id)> source;
    /// Restores one verified clone of the image's source snapshot, recorded as `pooled`.
    std::function<Result<PoolClone>(const std::string& image_id)> fill;
    /// Stops a clone and releases its record (destroyed, with the reason).
    std::function<void(PoolClone clone, const std::string& reason)> destroy;
  };
  struct Options {
    std::map<std::string, unsigned> targets;     // configured image → clones
    std::chrono::milliseconds idle_timeout{0};   // 0: none
    std::chrono::milliseconds ping_timeout{2000};
    std::chrono::milliseconds pass_interval{1000};  // between checks of sources, idle limits and liveness
  };

  ClonePool(Options options, Hooks hooks);
  /// Stops (see Stop()).
  ~ClonePool();
  ClonePool(const ClonePool&) = delete;
  ClonePool& operator=(const ClonePool&) = delete;

  /// Starts the background thread.
  void Start();
  /// Stops the thread (a fill under way finishes first) and destroys every clone. Idempotent.
  void Stop();
  /// Takes the oldest ready clone of the image whose snapshot is still the source and whose agent answers one
  /// ping; stale or dead clones met on the way are discarded (in the background). Sets `pool_take` (the
  /// whole take) and `agent` (the ping) in `timings`. nullopt when none is ready (a miss).
  std::optional<PoolClone> Take(const std::string& image_id, Timings& timings);
  /// True when the image (by id) has a pool entry with a non-zero target.
  bool Serves(const std::string& image_id) const;
  /// Asks the thread for a pass now (e.g. a build finished).
  void Wake();
  /// A snapshot of the pool for status and metrics.
  std::vector<PoolStatus> Status() const;

 private:
  struct Entry {
    std::string ref;
    unsigned target = 0;
    std::string image_id;  // resolved, or empty
    std::deque<PoolClone> clones;
    bool filling = false;
    int64_t filled = 0, taken = 0, misses = 0;
    std::map<std::string, int64_t> discarded;
    std::string last_error;
    int failures = 0;  // consecutive failed fills (backoff)
    std::chrono::steady_clock::time_point retry_at{};
  };

  void Run();
  // One pass: resolve, drain, expire, check liveness, destroy what was discarded; returns the entry to fill.
  Entry* Pass();
  void FillOne(Entry& e);
  void Discard(Entry& e, PoolClone clone, const std::string& reason);  // caller holds mu_
  void DestroyGraveyard();

  Options opts_;
  Hooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool wake_ = false;
  std::vector<Entry> entries_;
  std::vector<std::pair<PoolClone, std::string>> graveyard_;  // discarded, to destroy on the thread
  std::thread thread_;
};

}  // namespace fcwarm::internal
