/// \file
/// \brief The QEMU VMM backend (machine `microvm`, QMP control): options, host probe and factory
/// (docs/qemu-backend.md).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief Where a VM's RAM lives and how a snapshot captures it.
enum class QemuMemoryMode {
  /// \brief Anonymous RAM; a snapshot writes every guest page into the migration stream, and a restore reads
  /// them all back into the clone's own anonymous memory.
  kStream,
  /// \brief RAM in a `memory-backend-file`: the build VM maps a file shared (`share=on`), a snapshot copies
  /// that file next to a small device-state stream (migration capability `x-ignore-shared`), and every clone
  /// maps the snapshot's copy privately (`share=off`, copy-on-write), so clean pages are shared through the
  /// page cache. The snapshot's RAM file is never written after the build.
  kFile,
};

/// \brief How a VM is connected to the network.
enum class QemuNetworkMode {
  /// \brief Each VM gets its own network namespace holding a TAP `tap0` (QEMU runs inside that namespace)
  /// bridged to a veth pair whose host end carries the VM's gateway address. Needs CAP_NET_ADMIN.
  kNetns,
  /// \brief No network interface at all.
  kNone,
};

/// \brief Default of QemuOptions::kernel_boot_args: the `base:` line of guest/kernel-cmdline, the one source of
/// the guest kernel command line (copied into the library when the build is configured).
extern const char kQemuKernelBootArgs[];
/// \brief Default of QemuOptions::tcg_kernel_args: the `tcg:` line of guest/kernel-cmdline.
extern const char kQemuTcgKernelArgs[];

/// \brief Options of the QEMU backend. Every field has a default that works on a plain Debian 12 host.
struct QemuOptions {
  /// \brief The QEMU system emulator (searched in PATH when it has no '/'). Default: "qemu-system-x86_64".
  std::string qemu_binary = "qemu-system-x86_64";
  /// \brief The `qemu-img` tool used to create qcow2 overlays. Default: "qemu-img".
  std::string qemu_img_binary = "qemu-img";
  /// \brief The iproute2 `ip` program used for network namespaces, TAP and veth devices. Default: "ip".
  std::string ip_binary = "ip";
  /// \brief Accelerator: "tcg", "kvm", or "auto" (kvm when /dev/kvm can be opened read-write, else tcg).
  /// Default: "tcg" (nested/software KVM hosts such as CI machines boot far slower, or not at all, under kvm;
  /// set "kvm" or "auto" on real hardware).
  std::string accelerator = "tcg";
  /// \brief `-cpu` model; empty picks "host" under kvm and QEMU's default model under tcg. Default: empty.
  std::string cpu_model;
  /// \brief Kernel command line placed before RuntimeImage::boot_args.
  /// Default: kQemuKernelBootArgs (guest/kernel-cmdline, `base:`).
  std::string kernel_boot_args = kQemuKernelBootArgs;
  /// \brief Kernel arguments appended only when the accelerator resolves to tcg (TSC calibration otherwise
  /// hangs some boots). Default: kQemuTcgKernelArgs (guest/kernel-cmdline, `tcg:`).
  std::string tcg_kernel_args = kQemuTcgKernelArgs;
  /// \brief Memory mode of VMs and snapshots. A snapshot remembers its mode; Restore() follows the snapshot.
  /// Default: kFile (faster restores, clones share clean pages; see docs/qemu-backend.md).
  QemuMemoryMode memory_mode = QemuMemoryMode::kFile;
  /// \brief Network mode of cold-booted VMs. A clone gets a network interface exactly when its snapshot's VM
  /// had one. Default: kNetns.
  QemuNetworkMode network_mode = QemuNetworkMode::kNetns;
  /// \brief Prefix of per-VM network namespace names (the name is the prefix plus 10 hex digits).
  /// Default: "fcw-".
  std::string netns_prefix = "fcw-";
  /// \brief Prefix of the host end of a VM's veth pair (prefix plus 10 hex digits, at most 15 characters).
  /// Default: "fcwh".
  std::string veth_prefix = "fcwh";
  /// \brief Deadline of one ordinary QMP command (stop, cont, query-status). Default: 5 s.
  std::chrono::milliseconds qmp_timeout{5000};
  /// \brief How long to wait for QEMU's QMP socket after the process starts. Default: 10 s.
  std::chrono::milliseconds startup_timeout{10000};
  /// \brief Deadline of an outgoing migration (Vm::Snapshot) including copying RAM and disk. Default: 120 s.
  std::chrono::milliseconds snapshot_timeout{120000};
  /// \brief Deadline of an incoming migration (Restore) until the clone runs. Default: 60 s.
  std::chrono::milliseconds restore_timeout{60000};
  /// \brief Deadline of each helper program (`ip`, `qemu-img`, probes). Default: 10 s.
  std::chrono::milliseconds tool_timeout{10000};
  /// \brief Grace given to QEMU to exit after QMP `quit` when a Vm is destroyed without Stop(). Default: 2 s.
  std::chrono::milliseconds destroy_grace{2000};
  /// \brief Verify the XXH3 digest of the snapshot's device-state file before every restore (a corrupted
  /// stream is then refused instead of loaded). Default: true.
  bool verify_state_digest = true;
};

/// \brief Checks that QEMU can run VMs here with these options: the emulator and qemu-img run and report a
/// version, the emulator knows the `microvm` machine, and for accelerator "kvm" /dev/kvm opens read-write.
/// \param options The backend options to check.
/// \return Ok; NotFound when a binary is missing; Unavailable (with the reason) otherwise.
Status ProbeQemu(const QemuOptions& options);

/// \brief Creates the QEMU backend (Kind() "qemu").
///
/// One fresh QEMU process per VM and per restore, spawned from an argv vector (never a shell), controlled
/// through QMP on a Unix socket in the VM's work directory. Per VM, in LaunchSpec::work_dir: `qmp.sock`,
/// `agent.sock` (virtio-serial port `org.fcwarm.agent.0`), `console.log`, `qemu.log` (QEMU's stderr), a qcow2
/// overlay `disk.qcow2` on the image's read-only base disk, and in kFile mode the build VM's RAM file. Every
/// host resource (process, network namespace, veth, sockets, overlay, RAM file) is released by Vm::Stop() and
/// on every failure path; console.log and qemu.log are kept for diagnosis. A snapshot directory holds
/// `qemu.json` (VM shape and file digests), `state.bin` (the migration stream), `disk.qcow2` (when the image
/// has a base disk) and, in kFile mode, `memory.ram`.
///
/// Thread safety: the returned backend allows concurrent ColdBoot/Restore/HostCompatibility calls.
/// \param options Backend options.
/// \return The backend.
std::unique_ptr<Vmm> MakeQemuVmm(QemuOptions options = {});

}  // namespace fcwarm
