// Private: the QEMU command line of one VM, and the sidecar (qemu.json) a snapshot records so that a restore
// rebuilds the same device model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fcwarm/qemu_vmm.hpp"
#include "fcwarm/status.hpp"

namespace fcwarm::qemu {

// File names inside a VM's work directory and inside a snapshot directory.
inline constexpr const char* kQmpSock = "qmp.sock";
inline constexpr const char* kAgentSock = "agent.sock";
inline constexpr const char* kConsoleLog = "console.log";
inline constexpr const char* kQemuLog = "qemu.log";
inline constexpr const char* kDiskName = "disk.qcow2";
inline constexpr const char* kRamName = "memory.ram";
inline constexpr const char* kStateName = "state.bin";
inline constexpr const char* kSidecarName = "qemu.json";
inline constexpr const char* kAgentPortName = "org.fcwarm.agent.0";
inline constexpr const char* kTapName = "tap0";
inline constexpr int kSidecarFormat = 1;

/// Everything that determines one QEMU invocation.
struct VmConfig {
  std::string qemu_binary;
  std::string work_dir;
  std::string name;       // -name
  std::string accel;      // "tcg" | "kvm"
  std::string cpu_model;  // empty: QEMU's default
  uint32_t vcpus = 1;
  uint32_t memory_mib = 512;
  QemuMemoryMode memory_mode = QemuMemoryMode::kStream;
  std::string ram_path;   // kFile: the memory-backend-file path
  bool ram_share = true;  // kFile: share=on (build VM) or share=off (clone)
  std::string kernel;
  std::string initrd;     // may be empty
  std::string append;     // full kernel command line
  std::string disk;       // the VM's writable qcow2 overlay, or empty
  bool nic = false;       // a virtio-net device on tap0
  std::string mac;        // the NIC's MAC
  bool incoming = false;  // -incoming defer -S
};

/// QEMU option-value escaping: ',' doubles.
std::string EscapeOptValue(const std::string& value);

/// The argv (argv[0] is the binary).
std::vector<std::string> BuildArgv(const VmConfig& cfg);

/// The record of a snapshot (qemu.json).
struct Sidecar {
  int format = kSidecarFormat;
  std::string qemu_version;
  std::string accel;
  std::string cpu_model;
  uint32_t vcpus = 1;
  uint32_t memory_mib = 512;
  QemuMemoryMode memory_mode = QemuMemoryMode::kStream;
  std::string kernel;
  std::string initrd;
  std::string append;
  bool disk = false;  // kDiskName present
  bool nic = false;
  std::string mac;  // the build VM's MAC (recorded in the device state)
  uint64_t state_size = 0;
  std::string state_xxh3;
  uint64_t ram_size = 0;  // kFile

  std::string ToJson() const;
  static Result<Sidecar> Parse(const std::string& text, const std::string& what);
};

std::string_view MemoryModeName(QemuMemoryMode m);

}  // namespace fcwarm::qemu
