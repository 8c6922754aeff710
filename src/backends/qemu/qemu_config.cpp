#include "backends/qemu/qemu_config.hpp"

#include <boost/json.hpp>
#include <filesystem>

namespace fcwarm::qemu {
namespace json = boost::json;
namespace fs = std::filesystem;

std::string EscapeOptValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    out.push_back(c);
    if (c == ',') out.push_back(',');
  }
  return out;
}

std::string_view MemoryModeName(QemuMemoryMode m) { return m == QemuMemoryMode::kFile ? "file" : "stream"; }

std::vector<std::string> BuildArgv(const VmConfig& c) {
  auto in_dir = [&](const char* name) { return EscapeOptValue((fs::path(c.work_dir) / name).string()); };
  std::vector<std::string> a{c.qemu_binary};
  auto add = [&](std::initializer_list<std::string> items) { a.insert(a.end(), items); };
  add({"-name", EscapeOptValue(c.name.empty() ? std::string("fcwarm") : c.name)});
  std::string machine = "microvm";
  if (c.memory_mode == QemuMemoryMode::kFile) machine += ",memory-backend=ram0";
  add({"-machine", machine, "-accel", c.accel});
  add({"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"});
  if (!c.cpu_model.empty()) add({"-cpu", c.cpu_model});
  add({"-smp", std::to_string(c.vcpus), "-m", std::to_string(c.memory_mib) + "M"});
  if (c.memory_mode == QemuMemoryMode::kFile) {
    add({"-object", "memory-backend-file,id=ram0,size=" + std::to_string(c.memory_mib) +
                        "M,mem-path=" + EscapeOptValue(c.ram_path) +
                        ",share=" + (c.ram_share ? "on" : "off") + ",prealloc=off"});
  }
  add({"-kernel", c.kernel});
  if (!c.initrd.empty()) add({"-initrd", c.initrd});
  add({"-append", c.append});
  // Console (append mode keeps the boot log of a cold boot readable after a restore of another process).
  add({"-chardev", "file,id=con0,path=" + in_dir(kConsoleLog) + ",append=on", "-serial", "chardev:con0"});
  add({"-chardev", "socket,id=qmp0,path=" + in_dir(kQmpSock) + ",server=on,wait=off", "-mon",
       "chardev=qmp0,mode=control"});
  add({"-chardev", "socket,id=agent0,path=" + in_dir(kAgentSock) + ",server=on,wait=off"});
  add({"-device", "virtio-serial-device,id=vser0"});
  add({"-device", std::string("virtserialport,bus=vser0.0,chardev=agent0,name=") + kAgentPortName});
  if (!c.disk.empty()) {
    add({"-drive",
         "file=" + EscapeOptValue(c.disk) + ",format=qcow2,if=none,id=disk0,cache=writeback,discard=unmap"});
    add({"-device", "virtio-blk-device,drive=disk0"});
  }
  if (c.nic) {
    add({"-netdev", std::string("tap,id=net0,ifname=") + kTapName + ",script=no,downscript=no"});
    add({"-device", "virtio-net-device,netdev=net0,mac=" + c.mac});
  }
  if (c.incoming) add({"-incoming", "defer", "-S"});
  return a;
}

std::string Sidecar::ToJson() const {
  json::object o{{"format", format},
                 {"qemu_version", qemu_version},
                 {"accel", accel},
                 {"cpu_model", cpu_model},
                 {"vcpus", vcpus},
                 {"memory_mib", memory_mib},
                 {"memory_mode", std::string(MemoryModeName(memory_mode))},
                 {"kernel", kernel},
                 {"initrd", initrd},
                 {"append", append},
                 {"disk", disk ? std::string(kDiskName) : std::string()},
                 {"nic", nic},
                 {"mac", mac},
                 {"state_file", kStateName},
                 {"state_size", state_size},
                 {"state_xxh3", state_xxh3},
                 {"ram_file", memory_mode == QemuMemoryMode::kFile ? std::string(kRamName) : std::string()},
                 {"ram_size", ram_size}};
  return json::serialize(o) + "\n";
}

Result<Sidecar> Sidecar::Parse(const std::string& text, const std::string& what) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return Status::FailedPrecondition(what + " is not a JSON object");
  const auto& o = v.as_object();
  auto str = [&](const char* k) -> std::string {
    const auto* f = o.if_contains(k);
    return f && f->is_string() ? std::string(f->as_string()) : std::string();
  };
  auto num = [&](const char* k) -> uint64_t {
    const auto* f = o.if_contains(k);
    if (f && f->is_int64() && f->as_int64() >= 0) return static_cast<uint64_t>(f->as_int64());
    if (f && f->is_uint64()) return f->as_uint64();
    return 0;
  };
  Sidecar s;
  const auto* fmt = o.if_contains("format");
  if (!fmt || !fmt->is_int64() || fmt->as_int64() != kSidecarFormat) {
    return Status::FailedPrecondition(what + ": unsupported format (expected " +
                                      std::to_string(kSidecarFormat) + ")");
  }
  s.qemu_version = str("qemu_version");
  s.accel = str("accel");
  s.cpu_model = str("cpu_model");
  s.vcpus = static_cast<uint32_t>(num("vcpus"));
  s.memory_mib = static_cast<uint32_t>(num("memory_mib"));
  std::string mode = str("memory_mode");
  if (mode == "file") {
    s.memory_mode = QemuMemoryMode::kFile;
  } else if (mode == "stream") {
    s.memory_mode = QemuMemoryMode::kStream;
  } else {
    return Status::FailedPrecondition(what + ": unknown memory_mode '" + mode + "'");
  }
  s.kernel = str("kernel");
  s.initrd = str("initrd");
  s.append = str("append");
  s.disk = !str("disk").empty();
  const auto* nic = o.if_contains("nic");
  s.nic = nic && nic->is_bool() && nic->as_bool();
  s.mac = str("mac");
  s.state_size = num("state_size");
  s.state_xxh3 = str("state_xxh3");
  s.ram_size = num("ram_size");
  if (s.accel != "tcg" && s.accel != "kvm")
    return Status::FailedPrecondition(what + ": bad accel '" + s.accel + "'");
  if (s.vcpus < 1 || s.vcpus > 64 || s.memory_mib < 16)
    return Status::FailedPrecondition(what + ": bad VM shape");
  if (s.kernel.empty()) return Status::FailedPrecondition(what + ": no kernel");
  return s;
}

}  // namespace fcwarm::qemu
