// fcwarm-server: the REST API of fcwarm over HTTP/1.1 (docs/api.md, docs/operations.md).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "api.hpp"
#include "containers.hpp"
#include "fcwarm/backends.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/image_reference.hpp"
#include "fcwarm/service.hpp"
#include "fcwarm/version.hpp"
#include "http_server.hpp"
#include "none_vmm.hpp"
#include "net/ipv4.hpp"  // ParseCidr for --address-pool
#include "util/failpoint.hpp"

namespace fs = std::filesystem;
using namespace fcwarm;
using namespace fcwarm::server;

namespace {

struct Config {
  std::string bind = "127.0.0.1:18080";
  std::string data_dir = "/var/lib/fcwarm";
  std::vector<std::string> backends{"auto"};
  std::string auth_token;
  std::string auth_token_file;
  std::string port_file;
  std::string log_level = "info";
  size_t max_body_bytes = 1u << 20;
  size_t max_header_bytes = 16384;
  size_t max_url_bytes = 8192;
  double idle_timeout_s = 60;
  double request_timeout_s = 30;
  double shutdown_timeout_s = 30;
  size_t max_connections = 1024;
  unsigned workers = 8;
  unsigned provision_workers = 4;
  size_t provision_queue = 64;
  unsigned build_workers = 1;
  double wait_for_creating_s = 60;
  // QEMU
  std::string qemu_binary = "qemu-system-x86_64";
  std::string qemu_accel = "tcg";
  std::string qemu_memory_mode = "file";
  std::string qemu_network = "netns";
  // Firecracker
  std::string firecracker_binary = "firecracker";
  std::string bootstrap_image_dir;
  std::string bootstrap_docker_image_dir;
  std::string default_runtime_image;
  std::string egress = "all";
  std::vector<std::string> dns;
  std::vector<std::string> registry_mirrors;
  std::vector<std::string> insecure_registries;
  std::vector<std::string> preload_images;
  std::string publish_address = "127.0.0.1";
  int pull_timeout_s = 300;
  double none_delay_s = 0;
  std::vector<std::string> pool;
  double pool_idle_timeout_s = 300;
  bool stop_vms_on_exit = false;  // live restore: VMs outlive a restart unless asked
  std::string address_pool = "10.213.0.0/16";
  // Beyond one host (docs/multi-host.md)
  std::string node_id;
  std::string snapshot_repository;
  std::string s3_endpoint;
  std::string s3_region = "us-east-1";
  std::string s3_credentials_file;
  std::string coordination;
  int lock_ttl_s = 10;
  bool no_publish = false;
  bool no_fetch = false;
};

// "--address-pool A.B.C.D/N" → the pool's base and its number of /30 blocks; the error names the flag.
Result<std::pair<std::string, int64_t>> ParseAddressPool(const std::string& text) {
  auto cidr = net::ParseCidr(text, "--address-pool");  // refuses host bits set
  if (!cidr.ok()) return cidr.status();
  if (text.find('/') == std::string::npos || cidr->prefix < 8 || cidr->prefix > 30) {
    return Status::InvalidArgument("--address-pool: '" + text.substr(0, 64) +
                                   "' needs a prefix length between 8 and 30 (A.B.C.D/N; each VM takes a /30)");
  }
  return std::make_pair(net::FormatIpv4(cidr->addr), int64_t{1} << (30 - cidr->prefix));
}

// "--pool IMAGE=N" entries → RestoreOptions::pool; the error names the flag.
Result<std::map<std::string, unsigned>> ParsePool(const std::vector<std::string>& entries) {
  std::map<std::string, unsigned> out;
  for (const auto& e : entries) {
    auto eq = e.rfind('=');
    std::string image = eq == std::string::npos ? "" : e.substr(0, eq);
    std::string n = eq == std::string::npos ? "" : e.substr(eq + 1);
    bool digits = !n.empty() && n.size() <= 3;
    for (char c : n) digits = digits && c >= '0' && c <= '9';
    if (image.empty() || !digits) {
      return Status::InvalidArgument("--pool: '" + e.substr(0, 80) + "' is not IMAGE=N (a runtime image id or name, " +
                                     "a number of clones)");
    }
    unsigned size = static_cast<unsigned>(std::stoul(n));
    if (size > RestoreOptions::kMaxPoolSize) {
      return Status::InvalidArgument("--pool: '" + e.substr(0, 80) + "': N must be between 0 and " +
                                     std::to_string(RestoreOptions::kMaxPoolSize));
    }
    if (!Id::IsValid(image) && !ValidateName("--pool", image).ok()) {
      return Status::InvalidArgument("--pool: '" + image.substr(0, 64) +
                                     "' is neither a runtime image id nor a valid image name");
    }
    if (!out.emplace(image, size).second) {
      return Status::InvalidArgument("--pool: image '" + image + "' is given twice");
    }
  }
  return out;
}

// "host:port", "[v6]:port".
bool SplitHostPort(const std::string& s, std::string* host, int* port) {
  std::string h, p;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    h = s.substr(1, close - 1);
    p = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return false;
    h = s.substr(0, colon);
    p = s.substr(colon + 1);
  }
  if (h.empty() || p.empty() || p.size() > 5) return false;
  int v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > 65535) return false;
  if (h == "localhost") h = "127.0.0.1";
  *host = h;
  *port = v;
  return true;
}

bool IsLoopback(const std::string& host) { return host.rfind("127.", 0) == 0 || host == "::1"; }

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t'))
    s.pop_back();
  size_t b = 0;
  while (b < s.size() && (s[b] == ' ' || s[b] == '\t')) ++b;
  return s.substr(b);
}

bool WriteFileAtomic(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) return false;
    f << data;
    if (!f.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::chrono::milliseconds Ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

}  // namespace

// Registers a runtime image from guest artifacts unless an image of that name exists (first start).
// kind "minimal": bzImage + initramfs.cpio.gz + disk.ext4, ready file; kind "docker": the docker runtime image
// (guest/build-docker-image.sh), ready when dockerd answers _ping.
void BootstrapImage(Service& svc, const std::string& dir, const std::string& kind) {
  if (svc.images().GetByName(kind).ok()) return;
  if (!svc.vmms().Find("qemu")) {
    spdlog::warn("event=bootstrap_skipped name={} reason=\"no qemu backend\"", kind);
    return;
  }
  auto img = RuntimeImageFromArtifacts(kind, dir);
  if (!img.ok()) {
    spdlog::warn("event=bootstrap_failed name={} error=\"{}\"", kind, img.status().ToString());
    return;
  }
  auto r = svc.images().Register(*img);
  if (r.ok()) {
    spdlog::info("event=bootstrap_image id={} name={} dir={}", r->id, kind, dir);
  } else {
    spdlog::warn("event=bootstrap_failed name={} error=\"{}\"", kind, r.status().ToString());
  }
}

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  Config cfg;
  CLI::App app{"fcwarm-server: REST API for warm-booting microVMs (docs/api.md)", "fcwarm-server"};
  app.set_config("--config", "", "Read options from a TOML/INI file (keys are the long option names)");
  app.set_version_flag("--version", std::string(fcwarm::Version()));
  app.add_option("--bind", cfg.bind, "Listen address host:port ([v6]:port); port 0 picks a free port")
      ->capture_default_str();
  app.add_option("--data-dir", cfg.data_dir, "State directory: fcwarm.db, snapshots/, vms/, build/")
      ->capture_default_str();
  app.add_option(
         "--backend", cfg.backends,
         "VMM backend(s): auto (qemu when usable, else none), qemu, firecracker, none (no hypervisor: "
         "images can be registered, VMs cannot start); repeatable")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "qemu", "firecracker", "none"}));
  app.add_option("--auth-token", cfg.auth_token, "Bearer token required on every route but /healthz")
      ->envname("FCWARM_AUTH_TOKEN");
  app.add_option("--auth-token-file", cfg.auth_token_file, "File holding the bearer token (first line)");
  app.add_option("--port-file", cfg.port_file, "Write the bound port to this file once listening");
  app.add_option("--log-level", cfg.log_level, "trace, debug, info, warn, error, off")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--max-body-bytes", cfg.max_body_bytes, "Largest request body (413 beyond)")
      ->capture_default_str();
  app.add_option("--max-header-bytes", cfg.max_header_bytes, "Largest total of request headers (431 beyond)")
      ->capture_default_str();
  app.add_option("--max-url-bytes", cfg.max_url_bytes, "Longest request target (414 beyond)")
      ->capture_default_str();
  app.add_option("--idle-timeout", cfg.idle_timeout_s, "Seconds an idle keep-alive connection stays open")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 86400.0));
  app.add_option("--request-timeout", cfg.request_timeout_s,
                 "Seconds within which a request must arrive completely (slow clients get 408)")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--shutdown-timeout", cfg.shutdown_timeout_s,
                 "Seconds in-flight requests get after SIGTERM before connections are closed")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--max-connections", cfg.max_connections, "Open connections; further ones get 503")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app.add_option("--workers", cfg.workers, "Threads running API requests")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--provision-workers", cfg.provision_workers, "Concurrent background container provisions")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--provision-queue", cfg.provision_queue, "Queued background provisions before 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--build-workers", cfg.build_workers, "Concurrent snapshot builds")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--wait-for-creating", cfg.wait_for_creating_s,
                 "Seconds a container request waits for a snapshot being built before booting cold")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--qemu-binary", cfg.qemu_binary, "QEMU system emulator")->capture_default_str();
  app.add_option("--qemu-accel", cfg.qemu_accel, "QEMU accelerator: tcg, kvm, auto")
      ->capture_default_str()
      ->check(CLI::IsMember({"tcg", "kvm", "auto"}));
  app.add_option("--qemu-memory-mode", cfg.qemu_memory_mode, "QEMU RAM/snapshot mode: file, stream")
      ->capture_default_str()
      ->check(CLI::IsMember({"file", "stream"}));
  app.add_option("--qemu-network", cfg.qemu_network, "QEMU VM network: netns, none")
      ->capture_default_str()
      ->check(CLI::IsMember({"netns", "none"}));
  app.add_option("--bootstrap-image-dir", cfg.bootstrap_image_dir,
                 "Guest artifacts (bzImage, initramfs.cpio.gz, disk.ext4) registered as image 'minimal' at startup "
                 "unless an image of that name exists");
  app.add_option("--bootstrap-docker-image-dir", cfg.bootstrap_docker_image_dir,
                 "Docker runtime image (bzImage, initramfs.cpio.gz, docker-rootfs.ext4; guest/build-docker-image.sh) "
                 "registered as image 'docker' at startup unless an image of that name exists");
  app.add_option("--default-runtime-image", cfg.default_runtime_image,
                 "Runtime image (id or name) of container requests that name none (default: the one registered "
                 "container runtime image)");
  app.add_option("--egress", cfg.egress,
                 "What VMs may reach beyond the host: all (the internet, never the host's services, other VMs, "
                 "private or link-local ranges), none, or CIDR[,CIDR...]; registry mirrors are always allowed")
      ->capture_default_str();
  app.add_option("--dns", cfg.dns, "Resolver for guests (repeatable, at most 3; default: the host's resolvers)");
  app.add_option("--registry-mirror", cfg.registry_mirrors,
                 "Registry mirror (http://host:port) for the guests' Docker daemons (repeatable)");
  app.add_option("--publish-address", cfg.publish_address,
                 "Host address published container ports bind to when a request names none: 127.0.0.1 (only "
                 "this host), 0.0.0.0 (every address) or one address of this host")
      ->capture_default_str();
  app.add_option(
         "--pull-timeout", cfg.pull_timeout_s,
         "Seconds an image pull in a guest may take (a container's, or one preload of a snapshot build)")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--insecure-registry", cfg.insecure_registries,
                 "Registry the guests' Docker daemons may reach over plain HTTP (host:port or CIDR; repeatable)");
  app.add_option(
      "--preload-image", cfg.preload_images,
      "Container image (e.g. nginx:alpine) every snapshot build of a container runtime image pulls before "
      "the snapshot, so warm containers of it start without a pull (repeatable; a failed pull fails the "
      "build)");
  app.add_option("--pool", cfg.pool,
                 "IMAGE=N: keep N clones (0-16) of the runtime image's ready snapshot restored and verified in the "
                 "background; a request takes one instead of restoring (IMAGE: id or name; repeatable)")
      ->envname("FCWARM_POOL")
      ->delimiter(',');
  app.add_option("--pool-idle-timeout", cfg.pool_idle_timeout_s,
                 "Seconds a pooled clone may wait untaken before it is replaced by a fresh one (0: no limit)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  app.add_flag("--stop-vms-on-exit", cfg.stop_vms_on_exit,
               "Stop every VM at graceful shutdown (default: leave them running; the next start re-adopts them "
               "and a crash loses none)")
      ->envname("FCWARM_STOP_VMS_ON_EXIT");
  app.add_option("--address-pool", cfg.address_pool,
                 "Guest addresses, A.B.C.D/N: each VM takes a /30 (two servers on one host need pools of their own)")
      ->capture_default_str()
      ->envname("FCWARM_ADDRESS_POOL");
  app.add_option("--node-id", cfg.node_id,
                 "This node's name in the snapshot repository and in build locks (default: the host name)")
      ->envname("FCWARM_NODE_ID");
  app.add_option("--snapshot-repository", cfg.snapshot_repository,
                 "Share snapshots between hosts: s3://BUCKET[/PREFIX] (with --s3-endpoint) or file:///DIR; this "
                 "node publishes what it builds and fetches what another node built instead of building it")
      ->envname("FCWARM_SNAPSHOT_REPOSITORY");
  app.add_option("--s3-endpoint", cfg.s3_endpoint,
                 "S3 API endpoint of an s3:// repository, http(s)://HOST[:PORT] (path-style requests; credentials "
                 "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --s3-credentials-file)")
      ->envname("FCWARM_S3_ENDPOINT");
  app.add_option("--s3-region", cfg.s3_region, "Region S3 requests are signed for (SigV4)")
      ->capture_default_str()
      ->envname("FCWARM_S3_REGION");
  app.add_option("--s3-credentials-file", cfg.s3_credentials_file,
                 "AWS shared credentials file ([default] aws_access_key_id, aws_secret_access_key)")
      ->envname("FCWARM_S3_CREDENTIALS_FILE");
  app.add_option("--coordination", cfg.coordination,
                 "One build per cluster: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]; a node takes a lease-backed "
                 "lock before a build and other nodes wait for its published snapshot")
      ->envname("FCWARM_COORDINATION");
  app.add_option("--lock-ttl", cfg.lock_ttl_s,
                 "Seconds after which a dead node's build lock expires (etcd lease)")
      ->capture_default_str()
      ->check(CLI::Range(2, 3600));
  app.add_flag("--no-publish", cfg.no_publish, "Fetch from the snapshot repository but never publish to it");
  app.add_flag("--no-fetch", cfg.no_fetch, "Publish to the snapshot repository but always build locally");
  app.add_option("--firecracker-binary", cfg.firecracker_binary, "Firecracker binary")->capture_default_str();
  app.add_option("--none-delay", cfg.none_delay_s,
                 "Seconds the 'none' backend takes before failing a VM start (simulates a slow hypervisor)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 600.0));
  CLI11_PARSE(app, argc, argv);

  auto logger = spdlog::stderr_color_mt("fcwarm");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e%z level=%l thread=%t %v");
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));

  // ---- validate ------------------------------------------------------------------------------------------
  // Failpoints for the chaos tests (docs/failpoints.md): off unless FCWARM_FAILPOINTS names some.
  if (auto st = failpoint::ConfigureFromEnvironment(); !st.ok()) {
    spdlog::critical("event=config_error msg=\"{}\"", st.message());
    return 2;
  }
  if (failpoint::Armed()) spdlog::warn("event=failpoints_armed failpoints={}", failpoint::Describe());
  ServerOptions so;
  if (!SplitHostPort(cfg.bind, &so.host, &so.port)) {
    spdlog::critical("event=config_error msg=\"--bind: '{}' is not host:port\"", cfg.bind);
    return 2;
  }
  std::string token = cfg.auth_token;
  if (!cfg.auth_token_file.empty()) {
    std::ifstream f(cfg.auth_token_file);
    if (!f) {
      spdlog::critical("event=config_error msg=\"--auth-token-file: cannot read '{}'\"", cfg.auth_token_file);
      return 2;
    }
    std::string line;
    std::getline(f, line);
    token = Trim(line);
    if (token.empty()) {
      spdlog::critical("event=config_error msg=\"--auth-token-file: '{}' is empty\"", cfg.auth_token_file);
      return 2;
    }
  }
  if (!token.empty()) {
    if (token.size() < 16) {
      spdlog::critical("event=config_error msg=\"the auth token must be at least 16 characters\"");
      return 2;
    }
    for (char c : token) {
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
        spdlog::critical(
            "event=config_error msg=\"the auth token must not contain spaces or control characters\"");
        return 2;
      }
    }
  }
  if (!IsLoopback(so.host) && token.empty()) {
    spdlog::critical(
        "event=config_error msg=\"refusing to listen on non-loopback address {} without --auth-token or "
        "--auth-token-file\"",
        so.host);
    return 2;
  }
  for (size_t i = 0; i < cfg.preload_images.size(); ++i) {
    auto ref = ParseImageReference(cfg.preload_images[i], "--preload-image");
    if (!ref.ok()) {
      spdlog::critical("event=config_error msg=\"{}\"", ref.status().message());
      return 2;
    }
    for (size_t j = 0; j < i; ++j) {
      if (ParseImageReference(cfg.preload_images[j])->Normalized() == ref->Normalized()) {
        spdlog::critical("event=config_error msg=\"--preload-image: '{}' is given twice\"",
                         cfg.preload_images[i]);
        return 2;
      }
    }
  }
  auto pool = ParsePool(cfg.pool);
  if (!pool.ok()) {
    spdlog::critical("event=config_error msg=\"{}\"", pool.status().message());
    return 2;
  }
  so.limits.max_body_bytes = cfg.max_body_bytes;
  so.limits.max_header_bytes = cfg.max_header_bytes;
  so.limits.max_url_bytes = cfg.max_url_bytes;
  so.idle_timeout = Ms(cfg.idle_timeout_s);
  so.request_timeout = Ms(cfg.request_timeout_s);
  so.shutdown_timeout = Ms(cfg.shutdown_timeout_s);
  so.max_connections = cfg.max_connections;
  so.workers = cfg.workers;

  // ---- backends
  // --------------------------------------------------------------------------------------------
  // The server's own VM-less "none" backend is added here; every other name (and "auto") is the library's
  // decision (SelectBackends), with "none" as the fallback of "auto".
  BackendSelection selection;
  selection.backends.clear();
  selection.qemu.qemu_binary = cfg.qemu_binary;
  selection.qemu.accelerator = cfg.qemu_accel;
  selection.qemu.memory_mode = cfg.qemu_memory_mode == "stream" ? QemuMemoryMode::kStream : QemuMemoryMode::kFile;
  selection.qemu.network_mode = cfg.qemu_network == "none" ? QemuNetworkMode::kNone : QemuNetworkMode::kNetns;
  selection.firecracker.binary = cfg.firecracker_binary;
  const auto none_delay = Ms(cfg.none_delay_s);
  selection.auto_fallback = [none_delay] { return std::shared_ptr<Vmm>(MakeNoneVmm(none_delay)); };
  bool want_none = false;
  for (const auto& b : cfg.backends) {
    if (b == "none") {
      want_none = true;
    } else {
      selection.backends.push_back(b);
    }
  }
  std::shared_ptr<VmmRegistry> vmms = std::make_shared<VmmRegistry>();
  if (!selection.backends.empty()) {
    auto selected = SelectBackends(selection);
    if (!selected.ok()) {
      spdlog::critical("event=backend_unavailable error=\"{}\"", selected.status().ToString());
      return 2;
    }
    for (const auto& c : selected->choices) {
      if (c.fell_back) {
        spdlog::warn("event=backend_unavailable requested={} detail=\"{}\" fallback={}", c.requested, c.detail,
                     c.kind.empty() ? "nothing" : c.kind);
      } else {
        spdlog::info("event=backend kind={} detail=\"{}\"", c.kind, c.detail);
      }
    }
    vmms = selected->registry;
  }
  if (want_none) vmms->Add(MakeNoneVmm(none_delay));

  // ---- library
  // ---------------------------------------------------------------------------------------------
  std::error_code ec;
  fs::create_directories(cfg.data_dir, ec);
  if (ec) {
    spdlog::critical("event=config_error msg=\"--data-dir: cannot create '{}': {}\"", cfg.data_dir,
                     ec.message());
    return 1;
  }
  ::chmod(cfg.data_dir.c_str(), 0700);
  ServiceOptions opts = ServiceOptions::UnderDirectory(cfg.data_dir);
  opts.snapshots.build_workers = cfg.build_workers;
  opts.restore.wait_for_creating = Ms(cfg.wait_for_creating_s);
  opts.containers.start_workers = cfg.provision_workers;
  opts.containers.start_queue = cfg.provision_queue;
  opts.containers.default_runtime_image = cfg.default_runtime_image;
  opts.restore.egress = cfg.egress;
  opts.restore.dns = cfg.dns;
  opts.restore.registry_mirrors = cfg.registry_mirrors;
  opts.restore.insecure_registries = cfg.insecure_registries;
  opts.containers.publish_address = cfg.publish_address;
  opts.containers.pull_timeout = Ms(cfg.pull_timeout_s);
  opts.snapshots.pull_timeout = Ms(cfg.pull_timeout_s);
  opts.snapshots.preload_images = cfg.preload_images;
  opts.restore.pool = *pool;
  opts.restore.pool_idle_timeout = Ms(cfg.pool_idle_timeout_s);
  opts.restore.stop_vms_on_exit = cfg.stop_vms_on_exit;
  auto address_pool = ParseAddressPool(cfg.address_pool);
  if (!address_pool.ok()) {
    spdlog::critical("event=config_error msg=\"{}\"", address_pool.status().message());
    return 2;
  }
  opts.restore.address_pool_base = address_pool->first;
  opts.restore.address_pool_size = address_pool->second;
  opts.snapshots.node_id = cfg.node_id;
  opts.snapshots.repository.url = cfg.snapshot_repository;
  opts.snapshots.repository.s3_endpoint = cfg.s3_endpoint;
  opts.snapshots.repository.s3_region = cfg.s3_region;
  opts.snapshots.repository.credentials_file = cfg.s3_credentials_file;
  opts.snapshots.repository.publish = !cfg.no_publish;
  opts.snapshots.repository.fetch = !cfg.no_fetch;
  opts.snapshots.coordination.url = cfg.coordination;
  opts.snapshots.coordination.lock_ttl = std::chrono::seconds(cfg.lock_ttl_s);
  auto service = Service::Open(opts, vmms);
  if (!service.ok()) {
    spdlog::critical("event=open_failed error=\"{}\"", service.status().ToString());
    return 1;
  }
  std::unique_ptr<Service> svc = std::move(service).value();
  if (!cfg.bootstrap_image_dir.empty()) BootstrapImage(*svc, cfg.bootstrap_image_dir, "minimal");
  if (!cfg.bootstrap_docker_image_dir.empty()) BootstrapImage(*svc, cfg.bootstrap_docker_image_dir, "docker");
  if (auto st = svc->engine().CheckPool(); !st.ok()) {
    spdlog::critical("event=config_error msg=\"--pool: {}\"", st.message());
    return 2;
  }

  ServerStats stats;
  ContainerService containers(*svc);
  ApiOptions ao;
  ao.auth_token = token;
  Api api(*svc, containers, ao, &stats);

  int exit_code = 0;
  {
    HttpServer server(
        so, [&](const HttpRequest& r) { return api.Handle(r); }, &stats);
    if (auto st = server.Listen(); !st.ok()) {
      spdlog::critical("event=listen_failed error=\"{}\"", st.ToString());
      return 1;
    }
    std::string kinds;
    for (const auto& k : vmms->Kinds()) kinds += (kinds.empty() ? "" : ",") + k;
    spdlog::info(
        "event=listening address={} port={} data_dir={} backends={} auth={} version={}",
        so.host, server.port(), fs::absolute(cfg.data_dir).string(), kinds.empty() ? "-" : kinds, token.empty() ? "off" : "bearer",
        fcwarm::Version());
    if (!cfg.port_file.empty() && !WriteFileAtomic(cfg.port_file, std::to_string(server.port()) + "\n")) {
      spdlog::critical("event=config_error msg=\"--port-file: cannot write '{}'\"", cfg.port_file);
      return 1;
    }
    server.Run();
  }
  // Background starts still queued fail, running ones finish (ContainerManager's destructor).
  svc.reset();
  spdlog::info("event=stopped");
  if (!cfg.port_file.empty()) ::unlink(cfg.port_file.c_str());
  return exit_code;
}
