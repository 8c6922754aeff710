#include "core/clone_pool.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "util/common.hpp"
#include "util/failpoint.hpp"

namespace fcwarm::internal {

using Clock = std::chrono::steady_clock;

std::optional<uint64_t> ReadPssBytes(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  if (!f) return std::nullopt;
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Pss:", 0) != 0) continue;
    std::istringstream in(line.substr(4));
    uint64_t kb = 0;
    if (in >> kb) return kb * 1024;
    return std::nullopt;
  }
  return std::nullopt;
}

ClonePool::ClonePool(Options options, Hooks hooks) : opts_(std::move(options)), hooks_(std::move(hooks)) {
  for (const auto& [ref, n] : opts_.targets) {
    Entry e;
    e.ref = ref;
    e.target = n;
    entries_.push_back(std::move(e));
  }
}

ClonePool::~ClonePool() { Stop(); }

void ClonePool::Start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Run(); });
}

void ClonePool::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::vector<PoolClone> all;
  {
    std::lock_guard lock(mu_);
    for (auto& e : entries_) {
      for (auto& c : e.clones) all.push_back(std::move(c));
      e.clones.clear();
    }
  }
  DestroyGraveyard();
  for (auto& c : all) hooks_.destroy(std::move(c), "shutdown");
}

void ClonePool::Wake() {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

bool ClonePool::Serves(const std::string& image_id) const {
  std::lock_guard lock(mu_);
  for (const auto& e : entries_) {
    if (e.target > 0 && e.image_id == image_id) return true;
  }
  return false;
}

void ClonePool::Discard(Entry& e, PoolClone clone, const std::string& reason) {
  e.discarded[reason]++;
  spdlog::info("pool {}: discarding clone {} ({})", e.ref, clone.vm_id, reason);
  graveyard_.emplace_back(std::move(clone), reason);
}

void ClonePool::DestroyGraveyard() {
  std::vector<std::pair<PoolClone, std::string>> dead;
  {
    std::lock_guard lock(mu_);
    dead.swap(graveyard_);
  }
  for (auto& [c, reason] : dead) hooks_.destroy(std::move(c), reason);
}

std::optional<PoolClone> ClonePool::Take(const std::string& image_id, Timings& timings) {
  auto t0 = Clock::now();
  while (true) {
    PoolClone clone;
    {
      std::lock_guard lock(mu_);
      Entry* entry = nullptr;
      for (auto& e : entries_) {
        if (e.target > 0 && e.image_id == image_id) entry = &e;
      }
      if (!entry || stopping_) return std::nullopt;
      if (entry->clones.empty()) {
        entry->misses++;
        wake_ = true;
        cv_.notify_all();
        return std::nullopt;
      }
      clone = std::move(entry->clones.front());
      entry->clones.pop_front();
    }
    // Outside the lock: a DB read and a ping.
    auto src = hooks_.source(image_id);
    std::string reason;
    if (!src.ready) {
      reason = src.not_ready;
    } else if (src.snapshot_id != clone.snapshot_id || src.generation != clone.generation) {
      reason = "rebuilt";
    } else if (!clone.vm->IsAlive()) {
      reason = "dead";
    } else {
      auto tp = Clock::now();
      auto ping = clone.vm->guest().Ping(opts_.ping_timeout);
      timings["agent"] = util::MsSince(tp);
      if (!ping.ok()) {
        spdlog::warn("pool: clone {} failed the take's ping: {}", clone.vm_id, ping.status().ToString());
        reason = "dead";
      }
    }
    if (reason.empty() && !FCWARM_FAILPOINT_CHECK("pool.take").ok()) reason = "failpoint";  // discarded
    std::lock_guard lock(mu_);
    Entry* entry = nullptr;
    for (auto& e : entries_) {
      if (e.image_id == image_id) entry = &e;
    }
    if (!reason.empty()) {
      if (entry) {
        Discard(*entry, std::move(clone), reason);
      } else {
        graveyard_.emplace_back(std::move(clone), reason);
      }
      wake_ = true;
      cv_.notify_all();
      continue;
    }
    if (entry) entry->taken++;
    wake_ = true;  // refill
    cv_.notify_all();
    timings["pool_take"] = util::MsSince(t0);
    return clone;
  }
}

std::vector<PoolStatus> ClonePool::Status() const {
  std::vector<PoolStatus> out;
  std::lock_guard lock(mu_);
  for (const auto& e : entries_) {
    PoolStatus s;
    s.image = e.ref;
    s.runtime_image_id = e.image_id;
    s.target = e.target;
    s.filling = e.filling;
    s.filled = e.filled;
    s.taken = e.taken;
    s.misses = e.misses;
    s.discarded = e.discarded;
    s.last_error = e.last_error;
    for (const auto& c : e.clones) {
      PooledClone pc;
      pc.vm_id = c.vm_id;
      pc.snapshot_id = c.snapshot_id;
      pc.generation = c.generation;
      pc.ready_at = c.ready_at;
      pc.pid = c.vm ? c.vm->pid() : -1;
      pc.pss_bytes = ReadPssBytes(pc.pid);
      s.clones.push_back(std::move(pc));
    }
    out.push_back(std::move(s));
  }
  return out;
}

void ClonePool::Run() {
  while (true) {
    Entry* next = Pass();
    std::unique_lock lock(mu_);
    if (stopping_) return;
    if (next) {
      next->filling = true;
      lock.unlock();
      FillOne(*next);  // entries_ never changes size: the pointer stays valid
      continue;
    }
    cv_.wait_for(lock, opts_.pass_interval, [&] { return stopping_ || wake_; });
    wake_ = false;
    if (stopping_) return;
  }
}

ClonePool::Entry* ClonePool::Pass() {
  // Resolve names and read sources outside the lock (store reads); then decide under it.
  std::vector<Result<std::string>> ids;
  std::vector<PoolSource> sources;
  {
    std::vector<std::string> refs;
    {
      std::lock_guard lock(mu_);
      for (const auto& e : entries_) refs.push_back(e.target > 0 ? e.ref : std::string());
    }
    for (const auto& r : refs) {
      if (r.empty()) {
        ids.push_back(Status::NotFound(""));
        sources.push_back({});
        continue;
      }
      ids.push_back(hooks_.resolve(r));
      sources.push_back(ids.back().ok() ? hooks_.source(*ids.back()) : PoolSource{});
    }
  }
  Entry* next = nullptr;
  {
    std::lock_guard lock(mu_);
    auto now = Clock::now();
    for (size_t i = 0; i < entries_.size(); ++i) {
      Entry& e = entries_[i];
      if (e.target == 0) continue;
      std::string id = ids[i].ok() ? *ids[i] : std::string();
      if (!ids[i].ok()) e.last_error = ids[i].status().message();
      if (id != e.image_id) {  // the name now stands for another image, or for none
        while (!e.clones.empty()) {
          Discard(e, std::move(e.clones.front()), "image_removed");
          e.clones.pop_front();
        }
        e.image_id = id;
        e.failures = 0;
        if (!id.empty()) e.last_error.clear();
      }
      if (id.empty()) continue;
      const PoolSource& src = sources[i];
      std::deque<PoolClone> keep;
      for (auto& c : e.clones) {
        std::string reason;
        if (!src.ready) {
          reason = src.not_ready;
        } else if (src.snapshot_id != c.snapshot_id || src.generation != c.generation) {
          reason = "rebuilt";
        } else if (opts_.idle_timeout.count() > 0 && now - c.ready >= opts_.idle_timeout) {
          reason = "idle";
        } else if (!c.vm->IsAlive()) {
          reason = "dead";
        }
        if (reason.empty()) {
          keep.push_back(std::move(c));
        } else {
          Discard(e, std::move(c), reason);
        }
      }
      e.clones.swap(keep);
      if (!next && src.ready && e.clones.size() < e.target && now >= e.retry_at) next = &e;
    }
  }
  DestroyGraveyard();
  return next;
}

void ClonePool::FillOne(Entry& e) {
  std::string image_id;
  {
    std::lock_guard lock(mu_);
    image_id = e.image_id;
  }
  auto filled = hooks_.fill(image_id);
  if (auto fp = filled.ok() ? FCWARM_FAILPOINT_CHECK("pool.fill") : Status::Ok(); !fp.ok()) {
    hooks_.destroy(std::move(filled).value(), "failpoint");  // a restored, pooled clone: a failed fill
    filled = fp;
  }
  std::lock_guard lock(mu_);
  e.filling = false;
  if (!filled.ok()) {
    e.failures++;
    e.last_error = filled.status().message();
    auto backoff = std::min<int64_t>(int64_t{1000} << std::min(e.failures, 6), 60000);
    e.retry_at = Clock::now() + std::chrono::milliseconds(backoff);
    spdlog::warn("pool {}: fill failed ({} in a row; next try in {} ms): {}", e.ref, e.failures, backoff,
                 filled.status().ToString());
    return;
  }
  e.failures = 0;
  e.last_error.clear();
  e.filled++;
  PoolClone c = std::move(filled).value();
  if (stopping_ || c.image_id != e.image_id) {
    graveyard_.emplace_back(std::move(c), stopping_ ? "shutdown" : "image_removed");
    return;
  }
  spdlog::info("pool {}: clone {} ready ({} of {})", e.ref, c.vm_id, e.clones.size() + 1, e.target);
  e.clones.push_back(std::move(c));
}

}  // namespace fcwarm::internal
