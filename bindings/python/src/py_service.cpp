// Service: the assembled library.
#include "py_common.hpp"

namespace fcwarm::py {

void BindService(pyb::module_& m) {
  pyb::class_<Service>(m, "Service",
                       "The assembled library: store, images, snapshots, health and the restore engine.")
      .def_static(
          "open",
          [](const ServiceOptions& options, std::shared_ptr<VmmRegistry> vmms) {
            return Unwrap(Service::Open(options, std::move(vmms)));
          },
          Release(), pyb::arg("options"), pyb::arg("vmms"),
          "Opens the store, reconciles after a crash and starts the components.")
      .def_property_readonly("store", &Service::store, pyb::return_value_policy::reference_internal)
      .def_property_readonly("vmms", &Service::vmms, pyb::return_value_policy::reference_internal)
      .def_property_readonly("images", &Service::images, pyb::return_value_policy::reference_internal)
      .def_property_readonly("snapshots", &Service::snapshots, pyb::return_value_policy::reference_internal)
      .def_property_readonly("health", &Service::health, pyb::return_value_policy::reference_internal)
      .def_property_readonly("engine", &Service::engine, pyb::return_value_policy::reference_internal);
}

}  // namespace fcwarm::py
