// VMM backends, their registry and the library's backend selection.
#include "fcwarm/backends.hpp"
#include "py_common.hpp"

namespace fcwarm::py {

void BindBackends(pyb::module_& m) {
  pyb::class_<Vmm, std::shared_ptr<Vmm>>(m, "Vmm", "A VMM backend.")
      .def_property_readonly("kind", &Vmm::Kind)
      .def("host_compatibility", [](Vmm& v) { return Unwrap(v.HostCompatibility()); }, Release());
  pyb::class_<VmmRegistry, std::shared_ptr<VmmRegistry>>(m, "VmmRegistry", "The available VMM backends.")
      .def(pyb::init<>())
      .def("add", &VmmRegistry::Add, Release(), pyb::arg("vmm"))
      .def("find", &VmmRegistry::Find, Release(), pyb::arg("kind"))
      .def("kinds", &VmmRegistry::Kinds, Release());

  pyb::enum_<QemuMemoryMode>(m, "QemuMemoryMode", "Where a QEMU VM's RAM lives across snapshots.")
      .value("STREAM", QemuMemoryMode::kStream)
      .value("FILE", QemuMemoryMode::kFile);
  pyb::enum_<QemuNetworkMode>(m, "QemuNetworkMode", "How a QEMU VM is connected.")
      .value("NETNS", QemuNetworkMode::kNetns)
      .value("NONE", QemuNetworkMode::kNone);
  pyb::class_<QemuOptions>(m, "QemuOptions", "Options of the QEMU backend.")
      .def(pyb::init<>())
      .def_readwrite("qemu_binary", &QemuOptions::qemu_binary)
      .def_readwrite("qemu_img_binary", &QemuOptions::qemu_img_binary)
      .def_readwrite("accelerator", &QemuOptions::accelerator)
      .def_readwrite("kernel_boot_args", &QemuOptions::kernel_boot_args)
      .def_readwrite("tcg_kernel_args", &QemuOptions::tcg_kernel_args)
      .def_readwrite("memory_mode", &QemuOptions::memory_mode)
      .def_readwrite("network_mode", &QemuOptions::network_mode)
      .def_readwrite("restore_timeout", &QemuOptions::restore_timeout)
      .def_readwrite("verify_state_digest", &QemuOptions::verify_state_digest);
  m.def(
      "make_qemu_vmm", [](const QemuOptions& o) { return std::shared_ptr<Vmm>(MakeQemuVmm(o)); }, Release(),
      pyb::arg("options") = QemuOptions{}, "Creates the QEMU backend (kind 'qemu').");
  m.def(
      "probe_qemu", [](const QemuOptions& o) { Check(ProbeQemu(o)); }, Release(), pyb::arg("options") = QemuOptions{},
      "Raises NotFoundError/UnavailableError unless QEMU can run VMs here with these options.");

  pyb::class_<FirecrackerOptions>(m, "FirecrackerOptions", "Options of the Firecracker backend.")
      .def(pyb::init<>())
      .def_readwrite("binary", &FirecrackerOptions::binary)
      .def_readwrite("api_timeout", &FirecrackerOptions::api_timeout)
      .def_readwrite("snapshot_timeout", &FirecrackerOptions::snapshot_timeout)
      .def_readwrite("socket_wait", &FirecrackerOptions::socket_wait)
      .def_readwrite("kernel_boot_args", &FirecrackerOptions::kernel_boot_args)
      .def_readwrite("vsock_guest_cid", &FirecrackerOptions::vsock_guest_cid)
      .def_readwrite("agent_vsock_port", &FirecrackerOptions::agent_vsock_port)
      .def_readwrite("tap_prefix", &FirecrackerOptions::tap_prefix)
      .def_readwrite("netns_prefix", &FirecrackerOptions::netns_prefix);
  m.def(
      "make_firecracker_vmm",
      [](const FirecrackerOptions& o) { return std::shared_ptr<Vmm>(MakeFirecrackerVmm(o)); },
      Release(), pyb::arg("options") = FirecrackerOptions{}, "Creates the Firecracker backend (kind 'firecracker').");
  m.def(
      "probe_firecracker",
      [](const std::string& binary) {
        auto v = Unwrap(ProbeFirecracker(binary));
        return std::map<std::string, std::string>{{"version", v.text}, {"snapshot_version", v.snapshot_version}};
      },
      Release(), pyb::arg("binary") = "firecracker",
      "Runs `firecracker --version` and `--snapshot-version`; raises NotFoundError/UnavailableError.");

  pyb::class_<BackendChoice>(m, "BackendChoice", "One decision of select_backends().")
      .def_readonly("requested", &BackendChoice::requested)
      .def_readonly("kind", &BackendChoice::kind)
      .def_readonly("detail", &BackendChoice::detail)
      .def_readonly("fell_back", &BackendChoice::fell_back)
      .def("__repr__", [](const BackendChoice& c) {
        return "<fcwarm.BackendChoice " + c.requested + " -> " + (c.kind.empty() ? "nothing" : c.kind) + ": " +
               c.detail + ">";
      });
  m.def(
      "select_backends",
      [](const std::vector<std::string>& backends, const QemuOptions& q, const FirecrackerOptions& f) {
        BackendSelection sel;
        sel.backends = backends;
        sel.qemu = q;
        sel.firecracker = f;
        auto r = Unwrap(SelectBackends(sel));
        return std::make_pair(r.registry, r.choices);
      },
      Release(), pyb::arg("backends") = std::vector<std::string>{"auto"}, pyb::arg("qemu") = QemuOptions{},
      pyb::arg("firecracker") = FirecrackerOptions{},
      "The library's backend selection: returns (VmmRegistry, [BackendChoice]). 'auto' registers QEMU when it "
      "can run here (else nothing, and the choice says why); a backend named explicitly must work "
      "(NotFoundError/UnavailableError otherwise).");
}

}  // namespace fcwarm::py
