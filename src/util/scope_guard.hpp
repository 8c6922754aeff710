// Private: runs a release action when a scope ends, unless the scope succeeded and dismissed it. For steps
// that acquire something (a generation pin, a registration) and have several failing exits.
#pragma once

#include <utility>

namespace fcwarm::util {

template <typename F>
class [[nodiscard]] ScopeGuard {
 public:
  explicit ScopeGuard(F release) : release_(std::move(release)) {}
  ~ScopeGuard() {
    if (armed_) release_();
  }
  ScopeGuard(const ScopeGuard&) = delete;
  ScopeGuard& operator=(const ScopeGuard&) = delete;

  /// Keeps what was acquired: the release action will not run.
  void Dismiss() { armed_ = false; }

 private:
  F release_;
  bool armed_ = true;
};

}  // namespace fcwarm::util
