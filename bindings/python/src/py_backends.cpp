// VMM backends and their registry.
#include "py_common.hpp"

#if __has_include("fcwarm/qemu_vmm.hpp")
#include "fcwarm/qemu_vmm.hpp"
#define FCWARM_PY_HAVE_QEMU 1
#endif

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
}

}  // namespace fcwarm::py
