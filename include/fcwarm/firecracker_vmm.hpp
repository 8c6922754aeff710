/// \file
/// \brief The Firecracker VMM backend: options, version probe and factory (docs/firecracker.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief How a restored clone's guest memory is provided (`mem_backend.backend_type` of `/snapshot/load`).
enum class FirecrackerMemBackend {
  kFile,  ///< Firecracker maps the memory file privately; clean pages are shared through the page cache.
  kUffd,  ///< A page-fault handler process serves the memory over userfaultfd (needs `uffd_handler`).
};

/// \brief The `snapshot_type` written by `/snapshot/create`.
enum class FirecrackerSnapshotType {
  kFull,  ///< Every guest page is written (the only type a clone can be restored from on its own).
  kDiff,  ///< Only pages dirtied since the last snapshot (dirty page tracking is enabled at boot).
};

/// \brief Optional jailer mode: Firecracker runs under the `jailer` (chroot, uid/gid, cgroups, netns).
struct FirecrackerJailerOptions {
  /// \brief Path of the jailer binary; empty disables jailer mode. Default: empty.
  std::string binary;
  /// \brief User id Firecracker runs as inside the jail. Default: 0.
  uint32_t uid = 0;
  /// \brief Group id Firecracker runs as inside the jail. Default: 0.
  uint32_t gid = 0;
  /// \brief Base of the jails: each VM's root is `<chroot_base>/<firecracker file name>/<vm id>/root`.
  /// Default: "/srv/jailer".
  std::string chroot_base = "/srv/jailer";
  /// \brief cgroup version passed as `--cgroup-version`. Default: 2.
  int cgroup_version = 2;
  /// \brief cgroup settings, each "file=value" (e.g. "cpu.max=50000 100000"), passed as `--cgroup`.
  /// Default: none.
  std::vector<std::string> cgroups;
  /// \brief Parent cgroup passed as `--parent-cgroup`; empty omits it (the jailer's default "firecracker").
  /// Default: empty.
  std::string parent_cgroup;
};

/// \brief Options of the Firecracker backend. Every field has a default that works on a plain host.
struct FirecrackerOptions {
  /// \brief The `firecracker` binary (searched in PATH when it has no '/'). Default: "firecracker".
  std::string binary = "firecracker";
  /// \brief Jailer mode settings. Default: disabled.
  FirecrackerJailerOptions jailer;
  /// \brief Deadline of one ordinary API call (configuration, pause, resume). Default: 5 s.
  std::chrono::milliseconds api_timeout{5000};
  /// \brief Deadline of `/snapshot/create` and `/snapshot/load` (they write or map the whole memory).
  /// Default: 120 s.
  std::chrono::milliseconds snapshot_timeout{120000};
  /// \brief How long to wait for the API socket to accept connections after the process starts.
  /// Default: 5 s.
  std::chrono::milliseconds socket_wait{5000};
  /// \brief Deadline of `--version` / `--snapshot-version` probes. Default: 5 s.
  std::chrono::milliseconds probe_timeout{5000};
  /// \brief Memory backend of restored clones. Default: kFile.
  FirecrackerMemBackend mem_backend = FirecrackerMemBackend::kFile;
  /// \brief Page-fault handler program for kUffd, started per clone as
  /// `<uffd_handler> <socket path> <memory file>`; it must listen on the socket. Default: empty.
  std::string uffd_handler;
  /// \brief Snapshot type written by Vm::Snapshot(). Default: kFull.
  FirecrackerSnapshotType snapshot_type = FirecrackerSnapshotType::kFull;
  /// \brief Guest context id of the vsock device. Default: 3.
  uint32_t vsock_guest_cid = 3;
  /// \brief Guest vsock port of the fcwarm agent. Default: 52.
  uint32_t agent_vsock_port = 52;
  /// \brief Kernel command line placed before RuntimeImage::boot_args.
  /// Default: "console=ttyS0 reboot=k panic=1 pci=off".
  std::string kernel_boot_args = "console=ttyS0 reboot=k panic=1 pci=off";
  /// \brief Firecracker log level (`/logger` `level`). Default: "Info".
  std::string log_level = "Info";
  /// \brief The iproute2 `ip` program used to manage TAP devices and network namespaces. Default: "ip".
  std::string ip_binary = "ip";
  /// \brief Prefix of TAP device names; a VM's TAP is `<prefix><NetworkIdentity::index>` (at most 15
  /// characters in total). Default: "fcw".
  std::string tap_prefix = "fcw";
  /// \brief Prefix of per-VM network namespaces (a VM without a network identity, and clones on Firecracker
  /// < 1.12, which lacks `network_overrides`). Default: "fcwarm-".
  std::string netns_prefix = "fcwarm-";
  /// \brief Give a cold-booted VM without a network identity (NetworkIdentity::index < 0, e.g. a snapshot
  /// build VM) a network interface anyway, on a TAP inside a private network namespace, so that clones of its
  /// snapshot have an `eth0` to attach their own TAP to (a device cannot be added after a restore).
  /// Default: true.
  bool nic_without_identity = true;
};

/// \brief What `firecracker --version` and `--snapshot-version` report.
struct FirecrackerVersion {
  int major = 0;                 ///< Major version.
  int minor = 0;                 ///< Minor version.
  int patch = 0;                 ///< Patch version.
  std::string text;              ///< "1.14.2".
  std::string snapshot_version;  ///< Snapshot data format the binary writes, e.g. "v8.0.0".
  /// \brief True when this version is at least `maj`.`min`.
  /// \param maj Major version to compare with.
  /// \param min Minor version to compare with.
  bool AtLeast(int maj, int min) const { return major > maj || (major == maj && minor >= min); }
};

/// \brief Runs `binary --version` and `binary --snapshot-version` and parses them.
/// \param binary The Firecracker binary (searched in PATH when it has no '/').
/// \param timeout Deadline of each probe.
/// \return The versions; NotFound when the binary is missing, Unavailable when it fails or prints no version.
Result<FirecrackerVersion> ProbeFirecracker(const std::string& binary,
                                            std::chrono::milliseconds timeout = std::chrono::seconds(5));

/// \brief Parses a version such as "Firecracker v1.14.2" or "v8.0.0" (the first `[v]X.Y[.Z]` in the text).
/// \param text The text printed by the binary.
/// \return The version (snapshot_version left empty), or InvalidArgument.
Result<FirecrackerVersion> ParseFirecrackerVersion(const std::string& text);

/// \brief Creates the Firecracker backend (Kind() "firecracker").
///
/// The backend drives Firecracker's HTTP API over its Unix socket, one fresh process per VM and per restore.
/// Features are gated on the probed version: `mem_backend` (≥ 1.1), `network_overrides` (≥ 1.12, else a
/// per-clone network namespace), `track_dirty_pages` on load (≥ 1.13, `enable_diff_snapshots` before),
/// `vsock_override` (≥ 1.16, else the per-VM directory layout). Host resources (TAP devices, network
/// namespaces, sockets) are created per VM and removed by Vm::Stop() and on every failure.
/// Requires CAP_NET_ADMIN for VMs with a network identity.
///
/// Thread safety: the returned backend allows concurrent ColdBoot/Restore/HostCompatibility calls.
/// \param options Backend options.
/// \return The backend.
std::unique_ptr<Vmm> MakeFirecrackerVmm(FirecrackerOptions options = {});

}  // namespace fcwarm
