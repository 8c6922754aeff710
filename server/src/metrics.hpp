// Prometheus text exposition computed from the store (event log, snapshots, VMs) and the server's counters.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "fcwarm/service.hpp"

namespace fcwarm::server {

/// Counters the connection layer maintains (all relaxed atomics; read by /metrics).
struct ServerStats {
  std::atomic<int64_t> connections_open{0};
  std::atomic<int64_t> connections_total{0};
  std::atomic<int64_t> connections_rejected{0};
  std::atomic<int64_t> timeouts_idle{0};
  std::atomic<int64_t> timeouts_request{0};
  std::array<std::atomic<int64_t>, 600> responses_by_status{};
  void CountResponse(int status) {
    if (status >= 100 && status < 600) responses_by_status[status].fetch_add(1, std::memory_order_relaxed);
  }
};

/// Folds the event log into counters incrementally (each event is read once; the first scrape reads the
/// whole log), then renders the metrics.
///
/// Thread safety: Render() may be called concurrently (serialized internally).
class MetricsCollector {
 public:
  explicit MetricsCollector(Service& service) : service_(service) {}
  /// \return Prometheus text format 0.0.4, or the store's error.
  Result<std::string> Render(const ServerStats* stats);

  /// Upper bounds (seconds) of the boot-duration histogram buckets.
  static const std::vector<double>& Buckets();

 private:
  struct Histogram {
    std::vector<int64_t> counts;  // per bucket (non-cumulative), plus +Inf at the end
    double sum = 0;
    int64_t count = 0;
    void Observe(double seconds);
  };
  Status Fold();
  void RenderPool(std::string& out);

  Service& service_;
  std::mutex mu_;
  int64_t last_event_id_ = 0;
  std::map<std::string, int64_t> boots_;      // warm / cold / failed
  std::map<std::string, int64_t> fallbacks_;  // reason → count
  std::map<std::string, int64_t> builds_;     // ready / failed
  std::map<std::string, int64_t> health_;     // unhealthy / stale
  std::map<std::string, int64_t> repository_; // repository/coordination events by outcome (docs/multi-host.md)
  Histogram warm_;
  Histogram cold_;
  Histogram build_;
};

}  // namespace fcwarm::server
