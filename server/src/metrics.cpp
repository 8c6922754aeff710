#include "metrics.hpp"

#include <cstdio>

#include "fcwarm/version.hpp"

namespace fcwarm::server {

namespace {

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void Header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

std::string Escape(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      o += '\\';
      o += c;
    } else if (c == '\n') {
      o += "\\n";
    } else {
      o += c;
    }
  }
  return o;
}

double TotalMs(const Timings& t) {
  auto it = t.find("total");
  if (it != t.end()) return it->second;
  double sum = 0;
  for (const auto& [k, v] : t) sum += v;
  return sum;
}

}  // namespace

const std::vector<double>& MetricsCollector::Buckets() {
  static const std::vector<double> b{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5,   5,    10,    30,   60,  120,  300};
  return b;
}

void MetricsCollector::Histogram::Observe(double seconds) {
  const auto& b = Buckets();
  if (counts.empty()) counts.assign(b.size() + 1, 0);
  size_t i = 0;
  while (i < b.size() && seconds > b[i]) ++i;
  ++counts[i];
  sum += seconds;
  ++count;
}

Status MetricsCollector::Fold() {
  while (true) {
    EventFilter f;
    f.after_id = last_event_id_;
    f.limit = 1000;
    auto events = service_.store().ListEvents(f);
    if (!events.ok()) return events.status();
    for (const auto& e : *events) {
      last_event_id_ = std::max(last_event_id_, e.id);
      if (e.kind == EventKind::kBoot) {
        ++boots_[e.outcome];
        if (e.outcome == "cold" && !e.reason.empty()) ++fallbacks_[e.reason];
        double s = TotalMs(e.timings) / 1000.0;
        if (e.outcome == "warm") warm_.Observe(s);
        if (e.outcome == "cold") cold_.Observe(s);
      } else if (e.kind == EventKind::kBuild) {
        ++builds_[e.outcome];
        if (e.outcome == "ready") build_.Observe(TotalMs(e.timings) / 1000.0);
      } else if (e.kind == EventKind::kHealth) {
        ++health_[e.outcome];
      } else if (e.kind == EventKind::kRepository) {
        ++repository_[e.outcome];
      }
    }
    if (events->size() < 1000) return Status::Ok();
  }
}

// The clone pool (--pool): per configured image, and discards by reason over all images.
void MetricsCollector::RenderPool(std::string& out) {
  auto pool = service_.engine().Pool();
  if (pool.empty()) return;
  std::map<std::string, int64_t> discarded;
  for (const char* r : {"rebuilt", "deleted", "unhealthy", "idle", "dead", "image_removed"}) discarded[r] = 0;
  std::string size, ready, taken, misses, pss;
  for (const auto& p : pool) {
    std::string label = "{image=\"" + Escape(p.image) + "\"} ";
    size += "fcwarm_pool_size" + label + std::to_string(p.target) + "\n";
    ready += "fcwarm_pool_ready" + label + std::to_string(p.clones.size()) + "\n";
    taken += "fcwarm_pool_taken_total" + label + std::to_string(p.taken) + "\n";
    misses += "fcwarm_pool_misses_total" + label + std::to_string(p.misses) + "\n";
    uint64_t bytes = 0;
    for (const auto& c : p.clones) bytes += c.pss_bytes.value_or(0);
    pss += "fcwarm_pool_pss_bytes" + label + std::to_string(bytes) + "\n";
    for (const auto& [r, n] : p.discarded) discarded[r] += n;
  }
  Header(out, "fcwarm_pool_size", "gauge", "Clones the pool keeps ready, by runtime image (--pool).");
  out += size;
  Header(out, "fcwarm_pool_ready", "gauge", "Pooled clones ready to be taken, by runtime image.");
  out += ready;
  Header(out, "fcwarm_pool_taken_total", "counter", "Requests served by a pooled clone, by runtime image.");
  out += taken;
  Header(out, "fcwarm_pool_misses_total", "counter",
         "Requests of a pooled runtime image that found no ready clone (they restored as usual).");
  out += misses;
  Header(out, "fcwarm_pool_pss_bytes", "gauge",
         "Proportional set size of the pooled clones' VMM processes, summed per runtime image.");
  out += pss;
  Header(out, "fcwarm_pool_discarded_total", "counter", "Pooled clones destroyed without being taken, by reason.");
  for (const auto& [r, n] : discarded) {
    out += "fcwarm_pool_discarded_total{reason=\"" + Escape(r) + "\"} " + std::to_string(n) + "\n";
  }
}

Result<std::string> MetricsCollector::Render(const ServerStats* stats) {
  std::lock_guard lock(mu_);
  if (auto st = Fold(); !st.ok()) return st;
  SnapshotFilter sf;
  sf.include_deleted = true;
  auto snaps = service_.snapshots().List(sf);
  if (!snaps.ok()) return snaps.status();
  auto vms = service_.engine().List(false);
  if (!vms.ok()) return vms.status();

  std::string out;
  out.reserve(8192);
  Header(out, "fcwarm_build_info", "gauge", "Version of fcwarm-server.");
  out += "fcwarm_build_info{version=\"" + Escape(std::string(Version())) + "\"} 1\n";

  Header(out, "fcwarm_boots_total", "counter",
         "VM boots by outcome: warm (restored), cold (fallback or no "
         "snapshot), failed (even the cold boot failed).");
  for (const char* k : {"warm", "cold", "failed"}) {
    out += std::string("fcwarm_boots_total{outcome=\"") + k + "\"} " + std::to_string(boots_[k]) + "\n";
  }
  Header(out, "fcwarm_warm_restores_total", "counter", "Successful warm restores.");
  out += "fcwarm_warm_restores_total " + std::to_string(boots_["warm"]) + "\n";

  Header(out, "fcwarm_fallbacks_total", "counter", "Cold boots by fallback reason.");
  for (auto r : {FallbackReason::kNoSnapshot, FallbackReason::kSnapshotCreating,
                 FallbackReason::kSnapshotUnhealthy, FallbackReason::kIncompatible, FallbackReason::kCorrupt,
                 FallbackReason::kRestoreFailed, FallbackReason::kVerifyFailed}) {
    std::string name(ToString(r));
    out += "fcwarm_fallbacks_total{reason=\"" + name + "\"} " + std::to_string(fallbacks_[name]) + "\n";
  }

  auto hist = [&](const char* name, const char* help, const Histogram& h) {
    Header(out, name, "histogram", help);
    const auto& b = Buckets();
    int64_t cum = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      cum += h.counts.empty() ? 0 : h.counts[i];
      out += std::string(name) + "_bucket{le=\"" + Num(b[i]) + "\"} " + std::to_string(cum) + "\n";
    }
    out += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + "\n";
    out += std::string(name) + "_sum " + Num(h.sum) + "\n";
    out += std::string(name) + "_count " + std::to_string(h.count) + "\n";
  };
  hist("fcwarm_restore_duration_seconds", "Time from request to a verified VM for warm restores.", warm_);
  hist("fcwarm_cold_boot_duration_seconds", "Time from request to a verified VM for cold boots.", cold_);
  hist("fcwarm_snapshot_build_duration_seconds", "Duration of successful snapshot builds.", build_);

  Header(out, "fcwarm_snapshot_builds_total", "counter", "Snapshot builds by outcome.");
  for (const char* k : {"ready", "failed"}) {
    out += std::string("fcwarm_snapshot_builds_total{outcome=\"") + k + "\"} " + std::to_string(builds_[k]) +
           "\n";
  }
  Header(out, "fcwarm_snapshot_health_events_total", "counter",
         "Health transitions: unhealthy (failure threshold crossed), stale (incompatible key).");
  for (const char* k : {"unhealthy", "stale"}) {
    out += std::string("fcwarm_snapshot_health_events_total{event=\"") + k + "\"} " +
           std::to_string(health_[k]) + "\n";
  }

  std::map<std::string, int64_t> by_state;
  for (auto s : {SnapshotState::kCreating, SnapshotState::kReady, SnapshotState::kUnhealthy,
                 SnapshotState::kDeleted}) {
    by_state[std::string(ToString(s))] = 0;
  }
  for (const auto& s : *snaps) ++by_state[std::string(ToString(s.state))];
  Header(out, "fcwarm_runtime_snapshots", "gauge", "Runtime snapshots by state.");
  for (const auto& [k, v] : by_state) {
    out += "fcwarm_runtime_snapshots{state=\"" + k + "\"} " + std::to_string(v) + "\n";
  }
  // Ready snapshots by image and compatibility key, for placement (docs/multi-host.md): a scheduler, or the
  // node-label sidecar, prefers nodes where the image's snapshot is ready.
  std::map<std::string, std::string> image_names;
  if (auto images = service_.images().List(); images.ok()) {
    for (const auto& i : *images) image_names[i.id] = i.name;
  }
  Header(out, "fcwarm_snapshot_ready", "gauge",
         "1 for each ready runtime snapshot, by runtime image name, compatibility key and origin (built here "
         "or fetched from the snapshot repository).");
  for (const auto& s : *snaps) {
    if (s.state != SnapshotState::kReady) continue;
    auto it = image_names.find(s.runtime_image_id);
    out += "fcwarm_snapshot_ready{image=\"" + Escape(it == image_names.end() ? s.runtime_image_id : it->second) +
           "\",key=\"" + Escape(s.compatibility_key) + "\",origin=\"" + Escape(s.origin) + "\"} 1\n";
  }
  Header(out, "fcwarm_repository_events_total", "counter",
         "Snapshot repository and coordination events by outcome (fetched, fetch_failed, fetch_skipped, published, "
         "publish_failed, waited, wait_timed_out, repository_unavailable, coordination_unavailable).");
  for (const char* k : {"fetched", "fetch_failed", "fetch_skipped", "published", "publish_failed", "waited", "wait_timed_out",
                        "repository_unavailable", "coordination_unavailable"}) {
    out += std::string("fcwarm_repository_events_total{outcome=\"") + k + "\"} " +
           std::to_string(repository_[k]) + "\n";
  }
  Header(out, "fcwarm_snapshot_builds_active", "gauge", "Snapshot builds queued or running.");
  out += "fcwarm_snapshot_builds_active " + std::to_string(service_.snapshots().ActiveBuilds()) + "\n";

  std::map<std::string, int64_t> vm_state;
  for (auto s :
       {VmState::kStarting, VmState::kRunning, VmState::kStopped, VmState::kFailed, VmState::kLost,
        VmState::kPooled}) {
    vm_state[std::string(ToString(s))] = 0;
  }
  for (const auto& v : *vms) ++vm_state[std::string(ToString(v.state))];
  Header(out, "fcwarm_vms", "gauge", "VM records (not destroyed) by state.");
  for (const auto& [k, v] : vm_state) out += "fcwarm_vms{state=\"" + k + "\"} " + std::to_string(v) + "\n";

  RenderPool(out);

  const auto& adoption = service_.engine().adoption_report();
  Header(out, "fcwarm_vms_adopted_total", "counter",
         "Running VMs of the previous server process re-adopted at this start (live restore).");
  out += "fcwarm_vms_adopted_total " + std::to_string(adoption.adopted) + "\n";
  Header(out, "fcwarm_vms_lost_at_start_total", "counter",
         "Running VMs of the previous server process that could not be re-adopted at this start (marked lost).");
  out += "fcwarm_vms_lost_at_start_total " + std::to_string(adoption.lost) + "\n";

  Header(out, "fcwarm_automatic_rebuilds_total", "counter", "Rebuilds the health tracker requested.");
  out += "fcwarm_automatic_rebuilds_total " + std::to_string(service_.health().automatic_rebuilds()) + "\n";

  if (stats) {
    Header(out, "fcwarm_http_connections_open", "gauge", "Open client connections.");
    out += "fcwarm_http_connections_open " + std::to_string(stats->connections_open.load()) + "\n";
    Header(out, "fcwarm_http_connections_total", "counter", "Accepted client connections.");
    out += "fcwarm_http_connections_total " + std::to_string(stats->connections_total.load()) + "\n";
    Header(out, "fcwarm_http_connections_rejected_total", "counter",
           "Connections refused at the connection cap.");
    out +=
        "fcwarm_http_connections_rejected_total " + std::to_string(stats->connections_rejected.load()) + "\n";
    Header(out, "fcwarm_http_timeouts_total", "counter", "Connections closed by a timeout.");
    out += "fcwarm_http_timeouts_total{kind=\"idle\"} " + std::to_string(stats->timeouts_idle.load()) + "\n";
    out += "fcwarm_http_timeouts_total{kind=\"request\"} " + std::to_string(stats->timeouts_request.load()) +
           "\n";
    Header(out, "fcwarm_http_responses_total", "counter", "HTTP responses by status code.");
    for (int s = 100; s < 600; ++s) {
      int64_t n = stats->responses_by_status[s].load(std::memory_order_relaxed);
      if (n > 0)
        out += "fcwarm_http_responses_total{code=\"" + std::to_string(s) + "\"} " + std::to_string(n) + "\n";
    }
  }
  return out;
}

}  // namespace fcwarm::server
