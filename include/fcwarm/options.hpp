/// \file
/// \brief Options structs of the core classes, each field with its default.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fcwarm {

/// \brief Options of Store::Open().
struct StoreOptions {
  /// \brief SQLite file path, or ":memory:" for a private in-memory database. Default: "fcwarm.db".
  std::string path = "fcwarm.db";
  /// \brief How long a statement waits for a lock held by another connection. Default: 5 s.
  std::chrono::milliseconds busy_timeout{5000};
};

/// \brief Network of the VMs that get a network identity: the address pool they take a /30 from, the egress
/// rules the backend applies on the host side of their link, and what the identity step tells a container
/// runtime image's guest (resolvers, registry settings). RestoreOptions holds the same fields for clones;
/// Service::Open gives snapshot builds the restore options' values, so builds and clones share one pool and
/// one policy (docs/networking.md).
struct GuestNetworkOptions {
  /// \brief Base of the guest address pool; each VM gets a /30. Default: "10.213.0.0".
  std::string address_pool_base = "10.213.0.0";
  /// \brief Number of /30 blocks in the pool. Default: 16384.
  int64_t address_pool_size = 16384;
  /// \brief Give VMs a network identity at all. Default: true.
  bool allocate_network = true;
  /// \brief Egress policy: "all", "none", "CIDR[,CIDR...]", or empty for no egress rules. Default: empty.
  std::string egress;
  /// \brief Resolvers for guests. Empty: the host's resolvers when egress is set. Default: empty.
  std::vector<std::string> dns;
  /// \brief Registry mirrors ("http://host:port") for the guests' Docker daemon. Default: empty.
  std::vector<std::string> registry_mirrors;
  /// \brief Registries the guests' Docker daemon may reach over plain HTTP. Default: empty.
  std::vector<std::string> insecure_registries;
};

/// \brief A repository of snapshot generations shared by many hosts (docs/multi-host.md): a node publishes
/// what it builds and fetches what another node built instead of building it.
struct SnapshotRepositoryOptions {
  /// \brief "s3://BUCKET[/PREFIX]" (an S3 API, path-style requests to `s3_endpoint`) or "file:///DIR" (a
  /// directory, e.g. on a shared file system); empty: no repository. Default: empty.
  std::string url;
  /// \brief The S3 endpoint, "http(s)://HOST[:PORT]"; required for an s3:// URL. Default: empty.
  std::string s3_endpoint;
  /// \brief The region requests are signed for (SigV4). Default: "us-east-1".
  std::string s3_region = "us-east-1";
  /// \brief An AWS shared credentials file (its `[default]` profile); empty: the AWS_ACCESS_KEY_ID and
  /// AWS_SECRET_ACCESS_KEY environment variables. Default: empty.
  std::string credentials_file;
  /// \brief Publish every generation this node builds. Default: true.
  bool publish = true;
  /// \brief Fetch a published generation instead of building one. Default: true.
  bool fetch = true;
  /// \brief Parallel transfers of one publish or fetch, 1-64. Default: 4.
  unsigned workers = 4;
};

/// \brief One build per cluster (docs/multi-host.md): before building, a node takes a lease-backed lock in
/// etcd for what it builds; other nodes wait for the published generation instead of building it too.
struct CoordinationOptions {
  /// \brief "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"; empty: no coordination (every node may build).
  /// Default: empty.
  std::string url;
  /// \brief Lease of a build lock: a node that dies mid-build loses its lock this long after its last
  /// renewal. Default: 10 s.
  std::chrono::seconds lock_ttl{10};
  /// \brief How long a build waits for another node's build before it builds itself. Service::Open sets it to
  /// RestoreOptions::wait_for_creating. Default: 60 s.
  std::chrono::milliseconds wait_for_build{60000};
};

/// \brief Options of SnapshotManager.
struct SnapshotManagerOptions {
  /// \brief Root of the snapshot files: `<root>/<image_id>/<snapshot_id>/gen-<N>/`. Default:
  /// "/var/lib/fcwarm/snapshots".
  std::string root_dir = "/var/lib/fcwarm/snapshots";
  /// \brief Directory for build VMs' work directories. Default: "/var/lib/fcwarm/build".
  std::string build_dir = "/var/lib/fcwarm/build";
  /// \brief Concurrent builds. Default: 1.
  unsigned build_workers = 1;
  /// \brief Maximum non-deleted snapshots per runtime image. Default: 2.
  unsigned max_snapshots_per_image = 2;
  /// \brief Maximum non-deleted snapshots in total. Default: 64.
  unsigned max_snapshots_total = 64;
  /// \brief How long a build waits for the guest agent to answer after boot. Default: 120 s.
  std::chrono::milliseconds agent_timeout{120000};
  /// \brief How long a build waits for the runtime check to pass. Default: 300 s.
  std::chrono::milliseconds runtime_timeout{300000};
  /// \brief Interval between readiness polls. Default: 100 ms.
  std::chrono::milliseconds poll_interval{100};
  /// \brief Grace period when stopping the build VM. Default: 5 s.
  std::chrono::milliseconds stop_grace{5000};
  /// \brief Kill VMM processes recorded by a previous run at startup (reconciliation). Default: true.
  bool reconcile_processes = true;
  /// \brief Leave the `running` VMs of a previous run (their records, processes, addresses, work directories
  /// and host networking) to the RestoreEngine, which re-adopts them or marks them lost (live restore). False:
  /// reconciliation marks them lost and kills their processes itself. Service::Open sets it. Default: false.
  bool leave_running_vms = false;
  /// \brief Container images (Docker references, e.g. "nginx:alpine") every build of a container runtime
  /// image (runtime check kind "docker") pulls before the snapshot, before the image's own
  /// RuntimeImage::preload_images; a failed pull fails the build. Validated by Create() (InvalidArgument
  /// naming `preload_images[i]`). Default: none.
  std::vector<std::string> preload_images;
  /// \brief Deadline of one preload pull. Default: 300 s.
  std::chrono::milliseconds pull_timeout{300000};
  /// \brief Park one container per preload image in every snapshot of a container runtime image (the build's
  /// `parking` phase, docs/docker-runtime.md "Parked containers"): warm requests for those images then skip
  /// Docker's create and start. Skipped for a runtime image without /usr/lib/fcwarm/fcwarm-launch. Default: true.
  bool park_containers = true;
  /// \brief Network of build VMs that pull (only those get a network identity). Service::Open replaces it
  /// with the values of ServiceOptions::restore. Default: GuestNetworkOptions' defaults.
  GuestNetworkOptions network;
  /// \brief This node's name in the repository and in build locks ([A-Za-z0-9._-], at most 128). Default:
  /// empty, meaning the host name.
  std::string node_id;
  /// \brief The shared snapshot repository. Default: none.
  SnapshotRepositoryOptions repository;
  /// \brief Cluster-wide single-flight builds. Default: none.
  CoordinationOptions coordination;
};

/// \brief Options of HealthTracker.
struct HealthOptions {
  /// \brief Consecutive warm-restore failures that make a snapshot unhealthy. Default: 3.
  int64_t unhealthy_threshold = 3;
  /// \brief Rebuild unhealthy snapshots (and failed builds) automatically. Default: true.
  bool auto_rebuild = true;
  /// \brief Delay before retrying after the first failed build; doubles per failure. Default: 5 s.
  std::chrono::milliseconds rebuild_backoff_initial{5000};
  /// \brief Cap on the delay between automatic rebuild attempts, and the delay after a build that ran out of
  /// disk space (BuildOutcome::code kResourceExhausted). Default: 10 min.
  std::chrono::milliseconds rebuild_backoff_max{600000};
};

/// \brief Options of RestoreEngine.
struct RestoreOptions {
  /// \brief Directory holding one work directory per VM. Default: "/var/lib/fcwarm/vms".
  std::string vm_dir = "/var/lib/fcwarm/vms";
  /// \brief How long a request waits for a `creating` snapshot before booting cold. Default: 60 s.
  std::chrono::milliseconds wait_for_creating{60000};
  /// \brief Deadline for the guest agent of a restored clone to answer. Default: 10 s.
  std::chrono::milliseconds restore_agent_timeout{10000};
  /// \brief Deadline for the guest agent of a cold-booted VM to answer. Default: 120 s.
  std::chrono::milliseconds cold_agent_timeout{120000};
  /// \brief Deadline for the runtime check of a restored clone. Default: 15 s.
  std::chrono::milliseconds restore_runtime_timeout{15000};
  /// \brief Deadline for the runtime check of a cold-booted VM. Default: 300 s.
  std::chrono::milliseconds cold_runtime_timeout{300000};
  /// \brief Interval between readiness polls. Default: 50 ms.
  std::chrono::milliseconds poll_interval{50};
  /// \brief Recompute every file digest on every Nth warm restore of a snapshot (0: only when size or mtime
  /// changed). Default: 50.
  unsigned full_verify_every = 50;
  /// \brief Base of the guest address pool; each VM gets a /30 (gateway = base+4i+1, guest = base+4i+2).
  /// Default: "10.213.0.0".
  std::string address_pool_base = "10.213.0.0";
  /// \brief Number of /30 blocks in the pool. Default: 16384 (a /16).
  int64_t address_pool_size = 16384;
  /// \brief Give VMs a network identity (MAC/IP). Default: true.
  bool allocate_network = true;
  /// \brief Grace period when stopping a VM. Default: 3 s.
  std::chrono::milliseconds stop_grace{3000};
  /// \brief Boot cold when the warm path fails (false: return the error instead). Default: true.
  bool fallback_to_cold = true;
  /// \brief Egress of VMs with a network identity: "all" (the internet, never the host's services, other VMs,
  /// private or link-local ranges), "none", or "CIDR[,CIDR...]" (docs/networking.md). Empty: no egress rules
  /// at all, nothing is forwarded (the library's default; fcwarm-server defaults to "all").
  std::string egress;
  /// \brief Resolvers for guests (identity `dns`, reachable under every egress policy). Empty: the host's
  /// resolvers (its resolv.conf without loopback entries) when egress is set.
  std::vector<std::string> dns;
  /// \brief Registry mirrors ("http://host:port") for the Docker daemon of container runtime images, applied
  /// at every cold boot and restore (identity `docker`); their addresses are allowed by every egress policy.
  std::vector<std::string> registry_mirrors;
  /// \brief Registries the Docker daemon may reach over plain HTTP ("host:port" or CIDR).
  std::vector<std::string> insecure_registries;
  /// \brief The clone pool (docs/architecture.md, "The clone pool"): runtime image (id or name) → number of
  /// clones of its ready snapshot kept restored, unique and verified in the background, 0 to kMaxPoolSize.
  /// Provision() takes one (no restore on the request's path) and the pool refills. Names are resolved while
  /// the pool runs, so an image may be registered after the engine starts (RestoreEngine::CheckPool() reports
  /// names that resolve to nothing). Empty, or every size 0: no pool, no pooled VM. Default: empty.
  std::map<std::string, unsigned> pool;
  /// \brief How long a pooled clone may wait untaken before it is destroyed and replaced by a fresh one;
  /// 0: no limit. Default: 5 min.
  std::chrono::milliseconds pool_idle_timeout{300000};
  /// \brief Largest pool size of one image.
  static constexpr unsigned kMaxPoolSize = 16;
  /// \brief What happens to running VMs when the engine is destroyed (docs/operations.md, "Restarts and live
  /// restore"). True: they are stopped and released. False: they keep running (their VMM processes never die
  /// with this process) and the next engine on the same store re-adopts them; pooled clones are destroyed
  /// either way. Default: true (fcwarm-server defaults to false; `--stop-vms-on-exit` sets it).
  bool stop_vms_on_exit = true;
};

}  // namespace fcwarm
