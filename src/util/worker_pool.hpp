// Private: a fixed-size thread pool with a bounded queue (the container start queue; the server's HTTP handlers).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fcwarm::util {

/// Thread safety: Submit() and Shutdown() may be called from any thread.
class WorkerPool {
 public:
  /// \param threads Number of threads (at least 1).
  /// \param max_queue Maximum queued (not yet running) tasks; Submit() refuses beyond it (0: unbounded).
  WorkerPool(std::string name, unsigned threads, size_t max_queue = 0);
  /// Runs every queued task, then joins.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Queues a task. Returns false when the pool is shutting down or the queue is full.
  bool Submit(std::function<void()> task);
  /// Stops accepting tasks; `drain` runs the queued ones, otherwise they are returned unrun. Joins.
  std::vector<std::function<void()>> Shutdown(bool drain);
  /// Tasks queued or running.
  size_t Pending() const;

 private:
  void Run();
  std::string name_;
  size_t max_queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace fcwarm::util
