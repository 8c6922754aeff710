// The Firecracker backend: one Firecracker process per VM, driven through its HTTP API (docs/firecracker.md).
//
// Per-VM directory layout: Firecracker runs with its working directory set to the VM's directory (the work
// directory, or the jail root in jailer mode) and every path that a snapshot records (the writable disk, the
// vsock socket) is given *relative* to it. A clone started in its own directory therefore opens its own disk
// copy and binds its own vsock socket without any mount namespace.
#include "fcwarm/firecracker_vmm.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>

#include "backends/firecracker/api_client.hpp"
#include "backends/firecracker/files.hpp"
#include "backends/firecracker/vsock.hpp"
#include "backends/host_leftovers.hpp"
#include "guest/stream_channel.hpp"
#include "net/egress.hpp"
#include "net/ip.hpp"
#include "net/ports.hpp"
#include "net/tap.hpp"
#include "backends/host_rules.hpp"
#include "util/common.hpp"
#include "util/process.hpp"

namespace fcwarm {
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// File names inside a VM directory and a snapshot directory.
constexpr const char* kDiskName = "rootfs.ext4";
constexpr const char* kVsockName = "v.sock";
constexpr const char* kApiSockName = "api.sock";
constexpr const char* kUffdSockName = "uffd.sock";
constexpr const char* kLogName = "firecracker.log";
constexpr const char* kMetricsName = "firecracker.metrics";
constexpr const char* kConsoleName = "console.log";
constexpr const char* kStateName = "vm.state";
constexpr const char* kMemName = "vm.mem";
constexpr const char* kSidecarName = "firecracker.json";
constexpr const char* kIfaceId = "eth0";
constexpr const char* kIsolatedTap = "tap0";  // TAP name inside a per-VM network namespace
constexpr int kSidecarFormat = 1;
constexpr size_t kMaxSunPath = 107;

std::string Join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }


// What Vm::Snapshot() records next to Firecracker's files so that Restore() can rebuild the clone's layout.
struct Sidecar {
  std::string vmm_version;
  std::string snapshot_version;
  std::string snapshot_type = "Full";
  std::string disk;            // file name in the snapshot dir and in the clone dir, or empty
  std::string iface_id;        // empty: no network interface
  std::string host_dev_name;   // TAP name recorded in the state file
  std::string vsock_uds_path;  // as recorded in the state file (relative in the per-VM layout)
  bool jailed = false;

  std::string ToJson() const {
    json::object o{{"format", kSidecarFormat},
                   {"vmm_version", vmm_version},
                   {"snapshot_version", snapshot_version},
                   {"snapshot_type", snapshot_type},
                   {"state_file", kStateName},
                   {"memory_file", kMemName},
                   {"disk", disk},
                   {"iface_id", iface_id},
                   {"host_dev_name", host_dev_name},
                   {"vsock_uds_path", vsock_uds_path},
                   {"jailed", jailed}};
    return json::serialize(o) + "\n";
  }

  static Result<Sidecar> Read(const std::string& dir) {
    std::string path = Join(dir, kSidecarName);
    auto text = util::ReadFile(path, 1 << 20);
    if (!text.ok()) {
      return Status::FailedPrecondition(
          "snapshot directory " + dir + " has no readable " + kSidecarName +
          " (not written by the Firecracker backend): " + text.status().message());
    }
    boost::system::error_code ec;
    auto v = json::parse(*text, ec);
    if (ec || !v.is_object()) return Status::FailedPrecondition(path + " is not a JSON object");
    const auto& o = v.as_object();
    auto str = [&](const char* k) -> std::string {
      const auto* f = o.if_contains(k);
      return f && f->is_string() ? std::string(f->as_string()) : std::string();
    };
    const auto* fmt = o.if_contains("format");
    if (!fmt || !fmt->is_int64() || fmt->as_int64() != kSidecarFormat) {
      return Status::FailedPrecondition(path + ": unsupported format (expected " +
                                        std::to_string(kSidecarFormat) + ")");
    }
    Sidecar s;
    s.vmm_version = str("vmm_version");
    s.snapshot_version = str("snapshot_version");
    s.snapshot_type = str("snapshot_type");
    s.disk = str("disk");
    s.iface_id = str("iface_id");
    s.host_dev_name = str("host_dev_name");
    s.vsock_uds_path = str("vsock_uds_path");
    const auto* j = o.if_contains("jailed");
    s.jailed = j && j->is_bool() && j->as_bool();
    if (s.snapshot_version.empty()) return Status::FailedPrecondition(path + ": missing snapshot_version");
    if (s.disk.find('/') != std::string::npos)
      return Status::FailedPrecondition(path + ": disk must be a file name");
    return s;
  }
};

// The rules for `spec` on `root_tap`, the VM's TAP when it lives in the root namespace; none when it lives
// in a namespace of its own (a build VM, a clone on Firecracker < 1.12) or the VM has no NIC. Such a TAP has
// no link to the root namespace: nothing is forwarded for the guest anywhere, so there is no egress to filter
// (the guest reaches nothing beyond its own namespace, tighter than any policy) and no port can be published
// (FailedPrecondition). Rules in the root namespace would be wrong there as well: they match interface names,
// and the TAP's recorded name may belong to another VM's TAP in the root namespace.
Result<HostRules> PlanTapRules(const LaunchSpec& spec, const std::string& root_tap) {
  return PlanHostRules(spec.network, spec.vm_id, root_tap,
                       "no TAP in the root namespace: a VM without a network identity, a snapshot without a NIC, "
                       "or a clone on Firecracker < 1.12");
}

// Where one VM's files live.
struct Layout {
  std::string work_dir;      // LaunchSpec::work_dir (logs, console)
  std::string fc_dir;        // Firecracker's working directory (work_dir, or the jail root)
  std::string jail_id_dir;   // jailer mode: <chroot_base>/<exec name>/<id> (removed on Stop)
  std::string api_sock;      // host path of the API socket
  std::string api_sock_arg;  // --api-sock as Firecracker sees it
  std::string vsock_host;    // host path of the vsock socket
  bool jailed = false;
  // A path as Firecracker sees it, for a file in fc_dir.
  std::string FcView(const std::string& name) const { return jailed ? "/" + name : Join(fc_dir, name); }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Version probing.

Result<FirecrackerVersion> ParseFirecrackerVersion(const std::string& text) {
  static const std::regex re(R"((?:^|[^0-9.])v?(\d+)\.(\d+)(?:\.(\d+))?)");
  std::smatch m;
  if (!std::regex_search(text, m, re)) {
    return Status::InvalidArgument("no version number in '" + text.substr(0, 200) + "'");
  }
  FirecrackerVersion v;
  v.major = std::stoi(m[1].str());
  v.minor = std::stoi(m[2].str());
  v.patch = m[3].matched ? std::stoi(m[3].str()) : 0;
  v.text = std::to_string(v.major) + "." + std::to_string(v.minor) + "." + std::to_string(v.patch);
  return v;
}

Result<FirecrackerVersion> ProbeFirecracker(const std::string& binary, std::chrono::milliseconds timeout) {
  auto resolved = util::FindProgram(binary);
  if (!resolved || ::access(resolved->c_str(), X_OK) != 0) {
    return Status::NotFound("firecracker binary '" + binary + "' not found or not executable");
  }
  auto run = [&](const char* flag) -> Result<std::string> {
    auto r = util::Run({*resolved, flag}, timeout);
    if (!r.ok()) return r.status().WithContext(binary + " " + flag);
    if (r->exit_code != 0) {
      return Status::Unavailable(binary + " " + flag + " failed (exit " + std::to_string(r->exit_code) +
                                 "): " + r->output.substr(0, 300));
    }
    return r->output;
  };
  auto out = run("--version");
  if (!out.ok()) return out.status();
  auto v = ParseFirecrackerVersion(*out);
  if (!v.ok()) return Status::Unavailable(binary + " --version: " + v.status().message());
  auto snap = run("--snapshot-version");
  if (!snap.ok()) return snap.status();
  auto sv = ParseFirecrackerVersion(*snap);
  if (!sv.ok()) return Status::Unavailable(binary + " --snapshot-version: " + sv.status().message());
  v->snapshot_version = "v" + sv->text;
  return v;
}

namespace {

// ---------------------------------------------------------------------------------------------------------------
// One VM: a Firecracker process and the host resources made for it.

class FirecrackerVm : public Vm {
 public:
  FirecrackerVm(FirecrackerOptions opts, FirecrackerVersion version, const LaunchSpec& spec)
      : opts_(std::move(opts)), version_(std::move(version)), vm_id_(spec.vm_id), outlive_owner_(spec.outlive_owner) {
    layout_.work_dir = spec.work_dir;
    layout_.jailed = !opts_.jailer.binary.empty();
    if (layout_.jailed) {
      std::string exec_name = fs::path(opts_.binary).filename().string();
      layout_.jail_id_dir = (fs::path(opts_.jailer.chroot_base) / exec_name / vm_id_).string();
      layout_.fc_dir = Join(layout_.jail_id_dir, "root");
      layout_.api_sock_arg = "/" + std::string(kApiSockName);
    } else {
      layout_.fc_dir = spec.work_dir;
      layout_.api_sock_arg = Join(spec.work_dir, kApiSockName);
    }
    layout_.api_sock = Join(layout_.fc_dir, kApiSockName);
    layout_.vsock_host = Join(layout_.fc_dir, kVsockName);
    api_ = std::make_unique<firecracker::ApiClient>(layout_.api_sock);
    std::string vsock = layout_.vsock_host;
    uint32_t port = opts_.agent_vsock_port;
    guest::StreamChannelOptions go;
    go.persistent = false;  // vsock: one connection per request
    go.label = "vm " + spec.vm_id + ": ";
    guest_ = guest::MakeStreamGuestChannel(
        [vsock, port](std::chrono::milliseconds t) { return firecracker::ConnectVsock(vsock, port, t); }, go);
  }

  ~FirecrackerVm() override { (void)Stop(1000ms); }

  // ---- Vm ----
  int pid() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return exited_ ? -1 : pid_;
  }

  bool IsAlive() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_ || CheckExitedLocked()) return false;
    if (uffd_pid_ > 0) {
      if (auto st = util::TryReap(uffd_pid_)) {
        // Without its page-fault handler the guest hangs on the next fault: end the VM too.
        spdlog::warn("firecracker vm {}: uffd handler exited ({}); stopping the VM", vm_id_,
                     util::DescribeWaitStatus(*st));
        uffd_pid_ = -1;
        util::TerminateAndReap(pid_, 0ms);
        CheckExitedLocked();
        return false;
      }
    }
    return true;
  }

  GuestChannel& guest() override { return *guest_; }

  Status Pause() override {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = ApiLocked("PATCH", "/vm", json::object{{"state", "Paused"}}, opts_.api_timeout);
    if (st.ok()) paused_ = true;
    return st;
  }

  Status Resume() override {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = ApiLocked("PATCH", "/vm", json::object{{"state", "Resumed"}}, opts_.api_timeout);
    if (st.ok()) paused_ = false;
    return st;
  }

  Status Snapshot(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return Status::FailedPrecondition("snapshot: the VM is stopped");
    if (!paused_) return Status::FailedPrecondition("snapshot: the VM must be paused first (call Pause)");
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
      return Status::InvalidArgument("snapshot: " + dir + " is not a directory");
    std::string state_arg = layout_.jailed ? kStateName : Join(dir, kStateName);
    std::string mem_arg = layout_.jailed ? kMemName : Join(dir, kMemName);
    const bool diff = opts_.snapshot_type == FirecrackerSnapshotType::kDiff;
    json::object body{
        {"snapshot_type", diff ? "Diff" : "Full"}, {"snapshot_path", state_arg}, {"mem_file_path", mem_arg}};
    if (auto st = ApiLocked("PUT", "/snapshot/create", body, opts_.snapshot_timeout); !st.ok()) {
      // Firecracker reports a full file system only in its fault message ("No space left on device (os error
      // 28)").
      if (util::MentionsNoSpace(st.message())) return Status::ResourceExhausted(st.message());
      return st;
    }
    if (layout_.jailed) {
      for (const char* name : {kStateName, kMemName}) {
        if (auto st = firecracker::MoveFile(Join(layout_.fc_dir, name), Join(dir, name)); !st.ok()) return st;
      }
    }
    if (!disk_.empty()) {
      // The paused VM's writable disk; each clone gets its own copy of this file.
      if (auto st = firecracker::CopyFileSparse(Join(layout_.fc_dir, disk_), Join(dir, disk_)); !st.ok()) {
        return st.WithContext("snapshot disk");
      }
    }
    Sidecar s;
    s.vmm_version = version_.text;
    s.snapshot_version = version_.snapshot_version;
    s.snapshot_type = diff ? "Diff" : "Full";
    s.disk = disk_;
    s.iface_id = iface_id_;
    s.host_dev_name = host_dev_name_;
    s.vsock_uds_path = vsock_recorded_;
    s.jailed = layout_.jailed;
    return util::WriteFileDurable(Join(dir, kSidecarName), s.ToJson());
  }

  Status Stop(std::chrono::milliseconds grace) override {
    std::lock_guard<std::mutex> lock(mu_);
    return StopLocked(grace);
  }

  std::string console_log() const override { return Join(layout_.work_dir, kConsoleName); }

  Status Detach() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return Status::FailedPrecondition("firecracker vm " + vm_id_ + " is stopped");
    if (!outlive_owner_ && !foreign_) {
      return Status::FailedPrecondition("firecracker vm " + vm_id_ + " dies with this process");
    }
    DetachLocked();
    return Status::Ok();
  }

  // Takes over the running Firecracker `target` that an earlier process started for this VM (live restore):
  // the process (pidfd), its arguments (this VM's API socket or instance id), its API (GET / says Running),
  // its TAP (or namespace), and its host rules, applied again. On error the object lets go of everything.
  Status Adopt(const LaunchSpec& spec, const AdoptTarget& target) {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = AdoptLocked(spec, target);
    if (!st.ok()) DetachLocked();
    return st;
  }

  // ---- launching (called by the backend before the object is handed out) ----

  Status ColdBoot(const LaunchSpec& spec) {
    const RuntimeImage& image = spec.image;
    std::error_code ec;
    if (image.kernel_path.empty() || !fs::is_regular_file(image.kernel_path, ec)) {
      return Status::InvalidArgument("kernel '" + image.kernel_path + "' is not a file");
    }
    if (!image.initrd_path.empty() && !fs::is_regular_file(image.initrd_path, ec)) {
      return Status::InvalidArgument("initrd '" + image.initrd_path + "' is not a file");
    }
    if (!image.rootfs_path.empty() && !fs::is_regular_file(image.rootfs_path, ec)) {
      return Status::InvalidArgument("rootfs '" + image.rootfs_path + "' is not a file");
    }
    // The network and its host rules are checked before anything is created.
    std::optional<net::TapPlan> tap;
    if (spec.network.index >= 0 || opts_.nic_without_identity) {
      net::TapPlan& plan = tap.emplace();
      plan.ip_binary = opts_.ip_binary;
      if (spec.network.index >= 0) {
        plan.tap = opts_.tap_prefix + std::to_string(spec.network.index);
        auto gateway = net::GatewayCidr(spec.network.gateway, spec.network.ip_cidr);
        if (!gateway.ok()) return gateway.status().WithContext("network");
        plan.gateway_cidr = *gateway;
      } else {
        // No identity (a build VM): an isolated TAP, so that the snapshot carries a NIC for its clones.
        plan.tap = kIsolatedTap;
        plan.netns = opts_.netns_prefix + vm_id_;
      }
    }
    auto rules = PlanTapRules(spec, tap && tap->netns.empty() ? tap->tap : "");
    if (!rules.ok()) return rules.status();
    if (auto st = PrepareDirs(); !st.ok()) return st;
    std::string kernel_arg = image.kernel_path, initrd_arg = image.initrd_path;
    if (layout_.jailed) {
      if (auto st = firecracker::LinkOrCopy(image.kernel_path, Join(layout_.fc_dir, "vmlinux")); !st.ok())
        return st;
      kernel_arg = "/vmlinux";
      if (!image.initrd_path.empty()) {
        if (auto st = firecracker::LinkOrCopy(image.initrd_path, Join(layout_.fc_dir, "initrd")); !st.ok())
          return st;
        initrd_arg = "/initrd";
      }
    }
    if (!image.rootfs_path.empty()) {
      // The VM writes to its own copy; the image's base disk stays read-only.
      if (auto st = firecracker::CopyFileSparse(image.rootfs_path, Join(layout_.fc_dir, kDiskName));
          !st.ok()) {
        return st.WithContext("writable disk");
      }
      disk_ = kDiskName;
      ChownForJail(Join(layout_.fc_dir, disk_));
    }
    std::string netns;
    if (tap) {
      netns = tap->netns;
      if (auto st = CreateNetwork(*tap, *rules); !st.ok()) return st;
      iface_id_ = kIfaceId;
      host_dev_name_ = tap->tap;
    }
    if (auto st = StartProcess(spec, netns); !st.ok()) return st;
    if (auto st = ConfigureLogging(); !st.ok()) return st;

    std::string args = opts_.kernel_boot_args;
    if (!image.boot_args.empty()) args += (args.empty() ? "" : " ") + image.boot_args;
    if (opts_.agent_vsock_port != 52)
      args += " fcwarm.agent_vsock_port=" + std::to_string(opts_.agent_vsock_port);
    json::object boot{{"kernel_image_path", kernel_arg}, {"boot_args", args}};
    if (!initrd_arg.empty()) boot["initrd_path"] = initrd_arg;
    if (auto st = Api("PUT", "/boot-source", boot); !st.ok()) return st;

    json::object machine{{"vcpu_count", image.shape.vcpus}, {"mem_size_mib", image.shape.memory_mib}};
    if (opts_.snapshot_type == FirecrackerSnapshotType::kDiff) machine["track_dirty_pages"] = true;
    if (auto st = Api("PUT", "/machine-config", machine); !st.ok()) return st;

    if (!disk_.empty()) {
      // Relative path: resolves against Firecracker's working directory, so the state file records a path
      // that each clone resolves to its own copy.
      json::object drive{
          {"drive_id", "rootfs"}, {"path_on_host", disk_}, {"is_root_device", true}, {"is_read_only", false}};
      if (auto st = Api("PUT", "/drives/rootfs", drive); !st.ok()) return st;
    }
    if (!iface_id_.empty()) {
      json::object nic{{"iface_id", iface_id_}, {"host_dev_name", host_dev_name_}};
      if (!spec.network.mac.empty()) nic["guest_mac"] = spec.network.mac;
      if (auto st = Api("PUT", "/network-interfaces/" + iface_id_, nic); !st.ok()) return st;
    }
    vsock_recorded_ = kVsockName;
    json::object vsock{{"guest_cid", opts_.vsock_guest_cid}, {"uds_path", vsock_recorded_}};
    if (auto st = Api("PUT", "/vsock", vsock); !st.ok()) return st;
    if (version_.AtLeast(1, 4)) {
      if (auto st = Api("PUT", "/entropy", json::object{}); !st.ok()) return st;
    }
    return Api("PUT", "/actions", json::object{{"action_type", "InstanceStart"}});
  }

  Status Restore(const LaunchSpec& spec, const std::string& snapshot_dir) {
    auto side = Sidecar::Read(snapshot_dir);
    if (!side.ok()) return side.status();
    if (side->snapshot_version != version_.snapshot_version) {
      return Status::FailedPrecondition("snapshot in " + snapshot_dir + " was written by Firecracker " +
                                        side->vmm_version + " (snapshot format " + side->snapshot_version +
                                        "); this host runs Firecracker " + version_.text +
                                        " (snapshot format " + version_.snapshot_version +
                                        "): a different snapshot format cannot be loaded, rebuild "
                                        "the snapshot");
    }
    if (side->jailed != layout_.jailed) {
      return Status::FailedPrecondition(
          std::string("snapshot in ") + snapshot_dir + " was written " + (side->jailed ? "in" : "without") +
          " jailer mode; this backend runs " + (layout_.jailed ? "in" : "without") + " it");
    }
    std::error_code ec;
    for (const char* name : {kStateName, kMemName}) {
      if (!fs::is_regular_file(Join(snapshot_dir, name), ec)) {
        return Status::FailedPrecondition("snapshot in " + snapshot_dir + " lacks " + name);
      }
    }
    const bool uffd = opts_.mem_backend == FirecrackerMemBackend::kUffd;
    if (uffd && (opts_.uffd_handler.empty() || !version_.AtLeast(1, 1))) {
      return Status::FailedPrecondition(
          "the Uffd memory backend needs FirecrackerOptions::uffd_handler and "
          "Firecracker >= 1.1");
    }
    // The clone's network and its host rules are checked before anything is created.
    json::array overrides;
    std::optional<net::TapPlan> tap;
    if (!side->iface_id.empty()) {
      net::TapPlan& plan = tap.emplace();
      plan.ip_binary = opts_.ip_binary;
      auto gateway = net::GatewayCidr(spec.network.gateway, spec.network.ip_cidr);
      if (!gateway.ok()) return gateway.status().WithContext("network");
      plan.gateway_cidr = *gateway;
      if (version_.AtLeast(1, 12) && spec.network.index >= 0) {
        plan.tap = opts_.tap_prefix + std::to_string(spec.network.index);
        overrides.push_back(json::object{{"iface_id", side->iface_id}, {"host_dev_name", plan.tap}});
      } else {
        // No network_overrides (< 1.12): the recorded TAP name, inside a namespace of this clone's own.
        plan.tap = side->host_dev_name;
        plan.netns = opts_.netns_prefix + vm_id_;
      }
    }
    auto rules = PlanTapRules(spec, tap && tap->netns.empty() ? tap->tap : "");
    if (!rules.ok()) return rules.status();
    if (auto st = PrepareDirs(); !st.ok()) return st;

    std::string state_arg = Join(snapshot_dir, kStateName), mem_path = Join(snapshot_dir, kMemName);
    std::string mem_arg = mem_path;
    if (layout_.jailed) {
      for (const char* name : {kStateName, kMemName}) {
        if (auto st = firecracker::LinkOrCopy(Join(snapshot_dir, name), Join(layout_.fc_dir, name)); !st.ok())
          return st;
      }
      state_arg = std::string("/") + kStateName;
      mem_arg = std::string("/") + kMemName;
    }
    if (!side->disk.empty()) {
      if (auto st =
              firecracker::CopyFileSparse(Join(snapshot_dir, side->disk), Join(layout_.fc_dir, side->disk));
          !st.ok()) {
        return st.WithContext("clone disk");
      }
      disk_ = side->disk;
      ChownForJail(Join(layout_.fc_dir, disk_));
    }

    std::string netns;
    if (tap) {
      netns = tap->netns;
      if (auto st = CreateNetwork(*tap, *rules); !st.ok()) return st;
      iface_id_ = side->iface_id;
      host_dev_name_ =
          side->host_dev_name;  // what the state file records (kept for the clone's own snapshots)
    }
    vsock_recorded_ = side->vsock_uds_path;

    json::object mem_backend;
    if (uffd) {
      if (auto st = StartUffdHandler(spec, mem_path); !st.ok()) return st;
      mem_backend = {{"backend_type", "Uffd"},
                     {"backend_path", layout_.jailed ? "/" + std::string(kUffdSockName)
                                                     : Join(layout_.fc_dir, kUffdSockName)}};
    } else {
      mem_backend = {{"backend_type", "File"}, {"backend_path", mem_arg}};
    }
    if (auto st = StartProcess(spec, netns); !st.ok()) return st;
    if (auto st = ConfigureLogging(); !st.ok()) return st;

    json::object load{{"snapshot_path", state_arg}, {"resume_vm", true}};
    if (version_.AtLeast(1, 1)) {
      load["mem_backend"] = std::move(mem_backend);
    } else {
      load["mem_file_path"] = mem_arg;
    }
    if (side->snapshot_type == "Diff" || opts_.snapshot_type == FirecrackerSnapshotType::kDiff) {
      load[version_.AtLeast(1, 13) ? "track_dirty_pages" : "enable_diff_snapshots"] = true;
    }
    if (!overrides.empty()) load["network_overrides"] = std::move(overrides);
    if (!vsock_recorded_.empty() && version_.AtLeast(1, 16)) {
      std::string uds = layout_.jailed ? "/" + std::string(kVsockName) : layout_.vsock_host;
      if (uds.size() > kMaxSunPath) uds = kVsockName;
      load["vsock_override"] = json::object{{"uds_path", uds}};
    }
    auto st = Api("PUT", "/snapshot/load", load, opts_.snapshot_timeout);
    if (!st.ok()) return st;
    paused_ = false;
    return Status::Ok();
  }

  // Lets go of the process and every host resource without stopping or deleting anything.
  void DetachLocked() {
    for (auto* rules : {&ports_, &egress_}) {
      if (*rules) (*rules)->Forget();
      rules->reset();
    }
    if (net_) net_->Forget();
    net_.reset();
    foreign_.reset();
    stopped_ = true;
    exited_ = true;
  }

  Status AdoptLocked(const LaunchSpec& spec, const AdoptTarget& target) {
    auto proc = util::ForeignProcess::Open(target.pid, target.start_time);
    if (!proc.ok()) return proc.status();
    auto args = util::ProcessArgs(target.pid).value_or(std::vector<std::string>{});
    bool ours = false;
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      ours = ours || (args[i] == "--api-sock" && !layout_.jailed && args[i + 1] == layout_.api_sock_arg) ||
             (args[i] == "--id" && layout_.jailed && args[i + 1] == vm_id_);
    }
    if (!ours) {
      return Status::FailedPrecondition("process " + std::to_string(target.pid) + " is not the Firecracker of vm " +
                                        vm_id_);
    }
    foreign_ = std::move(proc).value();
    pid_ = target.pid;
    exited_ = false;
    auto info = api_->Call("GET", "/", "", opts_.api_timeout);
    if (!info.ok()) return Status::FailedPrecondition("API of vm " + vm_id_ + ": " + info.status().message());
    boost::system::error_code ec;
    json::value doc = json::parse(info->body, ec);
    const json::value* state = !ec && doc.is_object() ? doc.as_object().if_contains("state") : nullptr;
    std::string s = state && state->is_string() ? std::string(state->as_string()) : "";
    if (s != "Running") return Status::FailedPrecondition("firecracker vm " + vm_id_ + " is '" + s + "', not Running");
    struct stat disk_stat {};
    if (::stat(Join(layout_.fc_dir, kDiskName).c_str(), &disk_stat) == 0) disk_ = kDiskName;
    std::string root_tap;
    if (spec.network.index >= 0) {
      net::TapPlan plan;
      plan.ip_binary = opts_.ip_binary;
      std::string in_root = opts_.tap_prefix + std::to_string(spec.network.index);
      if (net::InterfaceExists(in_root)) {
        plan.tap = in_root;
        root_tap = in_root;
      } else {  // a clone on Firecracker < 1.12 keeps the snapshot's TAP name in a namespace of its own
        plan.tap = kIsolatedTap;
        plan.netns = opts_.netns_prefix + vm_id_;
      }
      net_ = std::make_unique<net::TapNetwork>(plan);
      if (auto st = net_->Adopt(); !st.ok()) return st.WithContext("network of vm " + vm_id_);
      iface_id_ = kIfaceId;
      host_dev_name_ = plan.tap;
    }
    auto rules = PlanTapRules(spec, root_tap);
    if (!rules.ok()) return rules.status();
    return ApplyRules(*rules);
  }

  // Releases everything after a failed launch (the object is then destroyed).
  void AbortLaunch() {
    std::lock_guard<std::mutex> lock(mu_);
    (void)StopLocked(0ms);
    if (!disk_.empty()) firecracker::RemoveQuietly(Join(layout_.fc_dir, disk_));
  }

 private:
  Status PrepareDirs() {
    std::error_code ec;
    if (!fs::is_directory(layout_.work_dir, ec)) {
      return Status::InvalidArgument("work directory '" + layout_.work_dir + "' does not exist");
    }
    if (layout_.api_sock.size() > kMaxSunPath || layout_.vsock_host.size() > kMaxSunPath) {
      return Status::InvalidArgument("VM directory '" + layout_.fc_dir +
                                     "' is too long for Unix socket paths (" + std::to_string(kMaxSunPath) +
                                     " bytes)");
    }
    if (layout_.jailed) {
      if (auto st = util::MakeDirs(layout_.fc_dir); !st.ok()) return st;
      ChownForJail(layout_.fc_dir);
    }
    // Stale sockets from a previous process would make Firecracker's bind() fail.
    for (const char* name : {kApiSockName, kVsockName, kUffdSockName})
      firecracker::RemoveQuietly(Join(layout_.fc_dir, name));
    return Status::Ok();
  }

  // Creates the VM's TAP (and namespace), then its egress rules and published ports on the TAP, before the
  // VMM opens it. On an error AbortLaunch() releases what was created (ports, egress, then the TAP).
  Status CreateNetwork(const net::TapPlan& plan, const HostRules& rules) {
    net_ = std::make_unique<net::TapNetwork>(plan);
    if (auto st = net_->Create(); !st.ok()) return st;
    return ApplyRules(rules);
  }

  // The VM's egress rules, then its published ports (each replaces that VM's rules of its kind).
  Status ApplyRules(const HostRules& rules) {
    if (rules.egress) {
      auto handle = net::ApplyEgress(*rules.egress);
      if (!handle.ok()) return handle.status().WithContext("egress of vm " + vm_id_);
      egress_ = std::move(handle).value();
    }
    if (rules.ports) {
      auto handle = net::PublishPorts(*rules.ports);
      if (!handle.ok()) return handle.status().WithContext("published ports of vm " + vm_id_);
      ports_ = std::move(handle).value();
    }
    return Status::Ok();
  }

  void ChownForJail(const std::string& path) {
    if (layout_.jailed && ::chown(path.c_str(), opts_.jailer.uid, opts_.jailer.gid) != 0) {
      spdlog::warn("firecracker vm {}: chown {}: {}", vm_id_, path, std::strerror(errno));
    }
  }

  Status StartProcess(const LaunchSpec& spec, const std::string& netns = "") {
    util::SpawnOptions so;
    so.stdout_path = Join(layout_.work_dir, kConsoleName);
    so.stderr_path = Join(layout_.work_dir, kLogName);
    if (layout_.jailed) {
      auto exec = util::FindProgram(opts_.binary);
      if (!exec) return Status::NotFound("firecracker binary '" + opts_.binary + "' not found");
      const auto& j = opts_.jailer;
      so.argv = {j.binary,
                 "--id",
                 vm_id_,
                 "--exec-file",
                 fs::absolute(*exec).string(),
                 "--uid",
                 std::to_string(j.uid),
                 "--gid",
                 std::to_string(j.gid),
                 "--chroot-base-dir",
                 j.chroot_base,
                 "--cgroup-version",
                 std::to_string(j.cgroup_version)};
      if (!j.parent_cgroup.empty()) so.argv.insert(so.argv.end(), {"--parent-cgroup", j.parent_cgroup});
      for (const auto& c : j.cgroups) so.argv.insert(so.argv.end(), {"--cgroup", c});
      if (!netns.empty()) so.argv.insert(so.argv.end(), {"--netns", "/var/run/netns/" + netns});
      so.argv.insert(so.argv.end(), {"--", "--api-sock", layout_.api_sock_arg});
    } else {
      so.argv = {opts_.binary, "--api-sock", layout_.api_sock_arg, "--id", vm_id_};
      so.cwd = layout_.fc_dir;
      so.netns = netns;
    }
    so.die_with_parent = !outlive_owner_;
    auto child = util::Spawn(so);
    if (!child.ok()) return child.status().WithContext("start firecracker");
    {
      std::lock_guard<std::mutex> lock(mu_);
      pid_ = child->pid;
      exited_ = false;
    }
    if (spec.on_process_started) spec.on_process_started(child->pid);
    return WaitForSocket(layout_.api_sock, pid_, "firecracker API socket");
  }

  Status StartUffdHandler(const LaunchSpec& spec, const std::string& mem_path) {
    util::SpawnOptions so;
    so.argv = {opts_.uffd_handler, Join(layout_.fc_dir, kUffdSockName), mem_path};
    so.stdout_path = Join(layout_.work_dir, "uffd-handler.log");
    so.cwd = layout_.work_dir;
    so.die_with_parent = !outlive_owner_;
    auto child = util::Spawn(so);
    if (!child.ok()) return child.status().WithContext("start uffd handler");
    {
      std::lock_guard<std::mutex> lock(mu_);
      uffd_pid_ = child->pid;
    }
    if (spec.on_process_started) spec.on_process_started(child->pid);
    return WaitForSocket(Join(layout_.fc_dir, kUffdSockName), uffd_pid_, "uffd handler socket");
  }

  Status WaitForSocket(const std::string& path, int pid, const std::string& what) {
    auto deadline = Clock::now() + opts_.socket_wait;
    auto sleep = 1ms;
    while (true) {
      if (firecracker::SocketAccepts(path)) return Status::Ok();
      if (auto st = util::TryReap(pid)) {
        std::lock_guard<std::mutex> lock(mu_);
        if (pid == pid_) {
          exited_ = true;
          exit_status_ = *st;
        } else {
          uffd_pid_ = -1;
        }
        std::string tail = firecracker::TailOf(Join(layout_.work_dir, kLogName));
        return Status::Unavailable("process " + std::to_string(pid) + " exited (" + util::DescribeWaitStatus(*st) +
                                   ") before the " + what + " " + path + " appeared" +
                                   (tail.empty() ? "" : "; log: " + tail));
      }
      if (Clock::now() >= deadline) {
        return Status::DeadlineExceeded("the " + what + " " + path + " did not appear within " +
                                        std::to_string(opts_.socket_wait.count()) + " ms");
      }
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::milliseconds(20));
    }
  }

  Status ConfigureLogging() {
    for (const char* name : {kLogName, kMetricsName}) {
      std::string p = Join(layout_.fc_dir, name);
      std::ofstream touch(p, std::ios::app);  // Firecracker opens these without O_CREAT
      ChownForJail(p);
    }
    json::object logger{
        {"log_path", kLogName}, {"level", opts_.log_level}, {"show_level", true}, {"show_log_origin", false}};
    if (auto st = Api("PUT", "/logger", logger); !st.ok()) return st;
    return Api("PUT", "/metrics", json::object{{"metrics_path", kMetricsName}});
  }

  Status Api(const std::string& method, const std::string& path, const json::object& body,
             std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
    std::lock_guard<std::mutex> lock(mu_);
    return ApiLocked(method, path, body, timeout.value_or(opts_.api_timeout));
  }

  Status ApiLocked(const std::string& method, const std::string& path, const json::object& body,
                   std::chrono::milliseconds timeout) {
    if (stopped_) return Status::FailedPrecondition(method + " " + path + ": the VM is stopped");
    if (CheckExitedLocked()) {
      return Status::Unavailable(method + " " + path + ": firecracker has exited (" +
                                 util::DescribeWaitStatus(exit_status_) + ")");
    }
    auto r = api_->Call(method, path, json::serialize(body), timeout);
    if (r.ok()) return Status::Ok();
    Status st = r.status();
    // A connection error usually means the process died mid-call: say so.
    // A failed /snapshot/load ends the process too (Firecracker exits after answering).
    int polls = st.code() != StatusCode::kFailedPrecondition || path == "/snapshot/load" ? 40 : 1;
    for (int i = 0; i < polls && !CheckExitedLocked(); ++i) std::this_thread::sleep_for(5ms);
    if (exited_) {
      std::string tail = firecracker::TailOf(Join(layout_.work_dir, kLogName));
      st = Status(st.code(), st.message() + "; firecracker exited (" + util::DescribeWaitStatus(exit_status_) + ")" +
                                 (tail.empty() ? "" : "; log: " + tail));
    }
    return st;
  }

  bool CheckExitedLocked() {
    if (exited_) return true;
    if (pid_ <= 0) return false;
    if (foreign_) {  // not our child: its pidfd tells
      if (!foreign_->Exited()) return false;
      exited_ = true;
      exit_status_ = 0;
      return true;
    }
    if (auto st = util::TryReap(pid_)) {
      exited_ = true;
      exit_status_ = *st;
      return true;
    }
    return false;
  }

  Status StopLocked(std::chrono::milliseconds grace) {
    if (stopped_) return Status::Ok();
    stopped_ = true;
    if (pid_ > 0 && !CheckExitedLocked() && foreign_) {
      if (grace.count() > 0) {
        (void)foreign_->Signal(SIGTERM);
        foreign_->WaitExit(grace);
      }
      (void)foreign_->Signal(SIGKILL);
      foreign_->WaitExit(10s);
      exited_ = true;
    } else if (pid_ > 0 && !CheckExitedLocked()) {
      util::TerminateAndReap(pid_, grace);
      exited_ = true;
    }
    if (uffd_pid_ > 0) {
      util::TerminateAndReap(uffd_pid_, 0ms);
      uffd_pid_ = -1;
    }
    for (const char* name : {kApiSockName, kVsockName, kUffdSockName})
      firecracker::RemoveQuietly(Join(layout_.fc_dir, name));
    // Published ports first, then the egress rules, then the TAP they name.
    Status result;
    for (auto* rules : {&ports_, &egress_}) {
      if (!*rules) continue;
      auto st = (*rules)->Release();
      if (st.ok()) {
        rules->reset();
      } else if (result.ok()) {
        result = st;
      }
    }
    if (net_) {
      auto st = net_->Release();
      if (st.ok()) {
        net_.reset();
      } else if (result.ok()) {
        result = st;
      }
    }
    if (layout_.jailed && !layout_.jail_id_dir.empty()) {
      util::RemoveTree(layout_.jail_id_dir);
      std::string parent = opts_.jailer.parent_cgroup.empty() ? "firecracker" : opts_.jailer.parent_cgroup;
      ::rmdir((fs::path("/sys/fs/cgroup") / parent / vm_id_).c_str());
    }
    if (!result.ok()) return result.WithContext("stop firecracker vm " + vm_id_);
    return Status::Ok();
  }

  const FirecrackerOptions opts_;
  const FirecrackerVersion version_;
  const std::string vm_id_;
  const bool outlive_owner_;                     // spawned without PR_SET_PDEATHSIG (LaunchSpec::outlive_owner)
  std::optional<util::ForeignProcess> foreign_;  // set for an adopted VM: its Firecracker is not our child
  Layout layout_;
  std::unique_ptr<firecracker::ApiClient> api_;
  std::unique_ptr<GuestChannel> guest_;
  std::unique_ptr<net::TapNetwork> net_;
  std::unique_ptr<net::RuleHandle> egress_;  // the VM's egress rules on its TAP, released before net_
  std::unique_ptr<net::RuleHandle> ports_;   // its published ports, released before egress_

  mutable std::mutex mu_;
  int pid_ = -1;
  bool exited_ = false;
  int exit_status_ = 0;
  int uffd_pid_ = -1;
  bool stopped_ = false;
  bool paused_ = false;
  std::string disk_;            // disk file name in fc_dir, or empty
  std::string iface_id_;        // empty: no NIC
  std::string host_dev_name_;   // TAP name the state file records
  std::string vsock_recorded_;  // vsock uds_path the state file records
};

// ---------------------------------------------------------------------------------------------------------------
// The backend.

class FirecrackerVmm : public Vmm, public HostLeftovers {
 public:
  explicit FirecrackerVmm(FirecrackerOptions opts) : opts_(std::move(opts)) {}

  std::string Kind() const override { return "firecracker"; }

  // Facts about Firecracker only, under vmm.*; the host's part of the key is the core's (core/host_facts.cpp).
  // QemuVmm's looks alike because both implement the same Vmm contract.
  Result<std::map<std::string, std::string>> HostCompatibility() override {
    auto v = Version();
    if (!v.ok()) return v.status();
    std::map<std::string, std::string> m;
    m["vmm.version"] = v->text;
    m["vmm.snapshot_version"] = v->snapshot_version;
    m["vmm.accel"] = "kvm";
    m["vmm.jailed"] = opts_.jailer.binary.empty() ? "false" : "true";
    return m;
  }

  Result<std::unique_ptr<Vm>> ColdBoot(const LaunchSpec& spec) override {
    return Launch(
        spec, [&](FirecrackerVm& vm) { return vm.ColdBoot(spec); }, "cold boot");
  }

  Result<std::unique_ptr<Vm>> Restore(const LaunchSpec& spec, const std::string& snapshot_dir) override {
    return Launch(
        spec, [&](FirecrackerVm& vm) { return vm.Restore(spec, snapshot_dir); }, "restore");
  }

  // A crashed run's VM: the namespace named from its id (a VM without identity, a clone on < 1.12) and the
  // TAP named from its allocation index in the root namespace — unless a running VMM holds that TAP open (a
  // TAP has a carrier only while a process has it open), which is then not this VM's.
  Result<int> RemoveVmLeftovers(const std::string& vm_id, int64_t index) override {
    int removed = 0;
    constexpr auto kTimeout = std::chrono::milliseconds(10000);
    if (!vm_id.empty() && vm_id.find('/') == std::string::npos) {
      auto ns = net::DeleteNetnsIfPresent(opts_.ip_binary, opts_.netns_prefix + vm_id, kTimeout);
      if (!ns.ok()) return ns.status();
      removed += *ns ? 1 : 0;
    }
    if (index >= 0) {
      std::string tap = opts_.tap_prefix + std::to_string(index);
      if (net::InterfaceHasCarrier(tap)) {
        spdlog::warn("firecracker: TAP {} of lost vm {} is held open by a running process; left in place",
                     tap, vm_id);
      } else {
        auto deleted = net::DeleteInterfaceIfPresent(opts_.ip_binary, tap, kTimeout);
        if (!deleted.ok()) return deleted.status();
        removed += *deleted ? 1 : 0;
      }
    }
    return removed;
  }

  Result<std::unique_ptr<Vm>> Adopt(const LaunchSpec& spec, const AdoptTarget& target) override {
    if (spec.vm_id.empty() || spec.vm_id.find('/') != std::string::npos || spec.vm_id.size() > 64) {
      return Status::InvalidArgument("vm id '" + spec.vm_id + "' is not usable as a Firecracker instance id");
    }
    auto v = Version();
    if (!v.ok()) return v.status();
    auto vm = std::make_unique<FirecrackerVm>(opts_, *v, spec);
    if (auto st = vm->Adopt(spec, target); !st.ok()) return st.WithContext("adopt of firecracker vm " + spec.vm_id);
    return std::unique_ptr<Vm>(std::move(vm));
  }

 private:
  template <typename F>
  Result<std::unique_ptr<Vm>> Launch(const LaunchSpec& spec, F&& fn, const char* what) {
    if (spec.vm_id.empty() || spec.vm_id.find('/') != std::string::npos || spec.vm_id.size() > 64) {
      return Status::InvalidArgument("vm id '" + spec.vm_id + "' is not usable as a Firecracker instance id");
    }
    auto v = Version();
    if (!v.ok()) return v.status();
    auto vm = std::make_unique<FirecrackerVm>(opts_, *v, spec);
    Status st = fn(*vm);
    if (!st.ok()) {
      vm->AbortLaunch();
      return st.WithContext(std::string("firecracker ") + what);
    }
    return std::unique_ptr<Vm>(std::move(vm));
  }

  Result<FirecrackerVersion> Version() {
    std::lock_guard<std::mutex> lock(mu_);
    if (version_) return *version_;
    auto v = ProbeFirecracker(opts_.binary, opts_.probe_timeout);
    if (!v.ok()) return v.status();
    if (!v->AtLeast(1, 0)) {
      return Status::FailedPrecondition("Firecracker " + v->text + " is too old (the backend needs >= 1.0)");
    }
    version_ = *v;
    return *v;
  }

  const FirecrackerOptions opts_;
  std::mutex mu_;
  std::optional<FirecrackerVersion> version_;
};

}  // namespace

std::unique_ptr<Vmm> MakeFirecrackerVmm(FirecrackerOptions options) {
  return std::make_unique<FirecrackerVmm>(std::move(options));
}

}  // namespace fcwarm
