#include "util/failpoint.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace fcwarm::failpoint {

namespace detail {
std::atomic<bool> g_armed{false};
}  // namespace detail

namespace {

enum class Mode : int { kOff, kCrash, kError };

struct Slot {
  std::atomic<int> mode{0};
  std::atomic<uint64_t> at{0};    // 0: every hit fires; N: only the N-th
  std::atomic<uint64_t> hits{0};  // hits while armed
};

std::array<Slot, kCount>& Slots() {
  static std::array<Slot, kCount> slots;
  return slots;
}

std::mutex& ConfigMutex() {
  static std::mutex mu;
  return mu;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string KnownNames() {
  std::string out;
  for (const auto& f : kFailpoints) out += (out.empty() ? "" : ", ") + std::string(f.name);
  return out;
}

}  // namespace

Status Fire(Name name) {
  Slot& s = Slots()[name.index()];
  auto mode = static_cast<Mode>(s.mode.load(std::memory_order_relaxed));
  if (mode == Mode::kOff) return Status::Ok();
  uint64_t hit = s.hits.fetch_add(1, std::memory_order_relaxed) + 1;
  uint64_t at = s.at.load(std::memory_order_relaxed);
  if (at != 0 && hit != at) return Status::Ok();
  if (mode == Mode::kCrash) {
    spdlog::critical("event=failpoint name={} hit={} action=crash", name.str(), hit);
    spdlog::default_logger()->flush();
    ::raise(SIGKILL);
  }
  spdlog::warn("event=failpoint name={} hit={} action=error", name.str(), hit);
  return Status::Internal("failpoint " + std::string(name.str()) + ": injected error");
}

namespace {

struct Entry {
  size_t index;
  Mode mode;
  uint64_t at;
};

Status Parse(std::string_view spec, std::vector<Entry>& entries) {
  std::set<size_t> seen;
  spec = Trim(spec);
  for (bool more = !spec.empty(); more;) {
    auto comma = spec.find(',');
    std::string_view item = Trim(spec.substr(0, comma));
    more = comma != std::string_view::npos;
    if (more) spec = spec.substr(comma + 1);
    const std::string shown(item.substr(0, 80));
    auto eq = item.find('=');
    if (item.empty() || eq == std::string_view::npos) {
      return Status::InvalidArgument("failpoint '" + shown + "' is not name=crash|error[@N]");
    }
    std::string_view name = Trim(item.substr(0, eq));
    std::string_view action = Trim(item.substr(eq + 1));
    size_t index = kCount;
    for (size_t i = 0; i < kCount; ++i) {
      if (kFailpoints[i].name == name) index = i;
    }
    if (index == kCount) {
      return Status::InvalidArgument("failpoint '" + std::string(name.substr(0, 80)) +
                                     "' is unknown (known: " + KnownNames() + ")");
    }
    if (!seen.insert(index).second) {
      return Status::InvalidArgument("failpoint '" + std::string(name) + "' is given twice");
    }
    uint64_t at = 0;
    if (auto atpos = action.find('@'); atpos != std::string_view::npos) {
      std::string_view n = action.substr(atpos + 1);
      action = action.substr(0, atpos);
      bool digits = !n.empty() && n.size() <= 9;
      for (char c : n) digits = digits && c >= '0' && c <= '9';
      if (digits) at = std::stoull(std::string(n));
      if (!digits || at == 0) {
        return Status::InvalidArgument("failpoint '" + shown +
                                       "': @N must be a hit number from 1 to 999999999");
      }
    }
    Mode mode;
    if (action == "crash") {
      mode = Mode::kCrash;
    } else if (action == "error") {
      mode = Mode::kError;
      if (kFailpoints[index].modes == Modes::kCrashOnly) {
        return Status::InvalidArgument("failpoint '" + std::string(name) +
                                       "' supports crash only (nothing would undo the work it follows)");
      }
    } else {
      return Status::InvalidArgument("failpoint '" + shown + "': unknown mode '" +
                                     std::string(action.substr(0, 40)) + "' (crash or error)");
    }
    entries.push_back({index, mode, at});
  }
  return Status::Ok();
}

}  // namespace

Status Configure(std::string_view spec) {
  std::vector<Entry> entries;
  Status parsed = Parse(spec, entries);
  if (!parsed.ok()) entries.clear();  // a refused spec arms nothing
  std::lock_guard lock(ConfigMutex());
  detail::g_armed.store(false, std::memory_order_relaxed);
  for (auto& s : Slots()) {
    s.mode.store(static_cast<int>(Mode::kOff), std::memory_order_relaxed);
    s.at.store(0, std::memory_order_relaxed);
    s.hits.store(0, std::memory_order_relaxed);
  }
  for (const auto& e : entries) {
    Slot& s = Slots()[e.index];
    s.at.store(e.at, std::memory_order_relaxed);
    s.mode.store(static_cast<int>(e.mode), std::memory_order_relaxed);
  }
  detail::g_armed.store(!entries.empty(), std::memory_order_seq_cst);
  return parsed;
}

Status ConfigureFromEnvironment() {
  const char* spec = std::getenv("FCWARM_FAILPOINTS");
  if (!spec) return Configure("");
  auto st = Configure(spec);
  return st.ok() ? st : st.WithContext("FCWARM_FAILPOINTS");
}

void Reset() { (void)Configure(""); }

std::string Describe() {
  std::lock_guard lock(ConfigMutex());
  std::string out;
  for (size_t i = 0; i < kCount; ++i) {
    const Slot& s = Slots()[i];
    auto mode = static_cast<Mode>(s.mode.load(std::memory_order_relaxed));
    if (mode == Mode::kOff) continue;
    out += (out.empty() ? "" : ",") + std::string(kFailpoints[i].name) +
           (mode == Mode::kCrash ? "=crash" : "=error");
    if (auto at = s.at.load(std::memory_order_relaxed)) out += "@" + std::to_string(at);
  }
  return out;
}

}  // namespace fcwarm::failpoint
