// Service: the assembled library.
#include "py_common.hpp"

namespace fcwarm::py {

namespace {

// Destroys a Service without the GIL. Its destructor joins library threads (snapshot build workers) that may
// need the GIL to finish: a build listener still running, or dropping the last reference to a Python callable.
// Holding the GIL there (Python deallocates objects with it held) would deadlock.
struct ServiceDeleter {
  void operator()(Service* s) const {
    if (Py_IsInitialized() && PyGILState_Check()) {
      pyb::gil_scoped_release release;
      delete s;
    } else {
      delete s;
    }
  }
};
using ServiceHolder = std::unique_ptr<Service, ServiceDeleter>;

}  // namespace

void BindService(pyb::module_& m) {
  pyb::class_<Service, ServiceHolder>(
      m, "Service", "The assembled library: store, images, snapshots, health, the restore engine and containers.")
      .def_static(
          "open",
          [](const ServiceOptions& options, std::shared_ptr<VmmRegistry> vmms) {
            return ServiceHolder(Unwrap(Service::Open(options, std::move(vmms))).release());
          },
          Release(), pyb::arg("options"), pyb::arg("vmms"),
          "Opens the store, reconciles after a crash and starts the components.")
      .def_property_readonly("store", &Service::store, pyb::return_value_policy::reference_internal)
      .def_property_readonly("vmms", &Service::vmms, pyb::return_value_policy::reference_internal)
      .def_property_readonly("images", &Service::images, pyb::return_value_policy::reference_internal)
      .def_property_readonly("snapshots", &Service::snapshots, pyb::return_value_policy::reference_internal)
      .def_property_readonly("health", &Service::health, pyb::return_value_policy::reference_internal)
      .def_property_readonly("engine", &Service::engine, pyb::return_value_policy::reference_internal)
      .def_property_readonly("containers", &Service::containers, pyb::return_value_policy::reference_internal);
}

}  // namespace fcwarm::py
