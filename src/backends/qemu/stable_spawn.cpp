#include "backends/qemu/stable_spawn.hpp"

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace fcwarm::qemu {
namespace {

class SpawnThread {
 public:
  SpawnThread() {
    std::thread([this] { Loop(); }).detach();  // lives until the process exits
  }

  Result<util::Child> Spawn(const util::SpawnOptions& opts) {
    std::packaged_task<Result<util::Child>()> task([&opts] { return util::Spawn(opts); });
    auto result = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return result.get();
  }

 private:
  void Loop() {
    while (true) {
      std::packaged_task<Result<util::Child>()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<Result<util::Child>()>> queue_;
};

}  // namespace

Result<util::Child> SpawnOnStableThread(const util::SpawnOptions& opts) {
  // Never destroyed: the detached thread uses it until the process ends.
  static SpawnThread* thread = new SpawnThread();
  return thread->Spawn(opts);
}

}  // namespace fcwarm::qemu
