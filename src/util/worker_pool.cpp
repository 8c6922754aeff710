#include "util/worker_pool.hpp"

#include <pthread.h>

namespace fcwarm::util {

WorkerPool::WorkerPool(std::string name, unsigned threads, size_t max_queue)
    : name_(std::move(name)), max_queue_(max_queue) {
  if (threads == 0) threads = 1;
  threads_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Run(); });
    std::string tname = name_.substr(0, 10) + "-" + std::to_string(i);
    pthread_setname_np(threads_.back().native_handle(), tname.substr(0, 15).c_str());
  }
}

WorkerPool::~WorkerPool() { Shutdown(true); }

bool WorkerPool::Submit(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    if (max_queue_ != 0 && queue_.size() >= max_queue_) return false;
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

std::vector<std::function<void()>> WorkerPool::Shutdown(bool drain) {
  std::vector<std::function<void()>> dropped;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (!drain) {
      for (auto& t : queue_) dropped.push_back(std::move(t));
      queue_.clear();
    }
  }
  cv_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
  return dropped;
}

size_t WorkerPool::Pending() const {
  std::lock_guard lock(mu_);
  return queue_.size() + running_;
}

void WorkerPool::Run() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    task();
    {
      std::lock_guard lock(mu_);
      --running_;
    }
  }
}

}  // namespace fcwarm::util
