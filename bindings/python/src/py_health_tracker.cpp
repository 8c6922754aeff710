// HealthTracker.
#include "py_common.hpp"

namespace fcwarm::py {

void BindHealthTracker(pyb::module_& m) {
  pyb::class_<HealthTracker>(m, "HealthTracker", "Outcome counts per snapshot, threshold and automatic rebuilds.")
      .def("record_success",
           [](HealthTracker& h, const std::string& id, int64_t generation) { Check(h.RecordSuccess(id, generation)); },
           Release(), pyb::arg("snapshot_id"), pyb::arg("generation"))
      .def("record_failure",
           [](HealthTracker& h, const std::string& id, int64_t generation, const std::string& error) {
             Check(h.RecordFailure(id, generation, error));
           },
           Release(), pyb::arg("snapshot_id"), pyb::arg("generation"), pyb::arg("error"))
      .def("record_incompatible",
           [](HealthTracker& h, const std::string& id, const std::string& d) { Check(h.RecordIncompatible(id, d)); },
           Release(), pyb::arg("snapshot_id"), pyb::arg("detail"))
      .def("stats", [](const HealthTracker& h, const std::string& id) { return Unwrap(h.Stats(id)); }, Release(),
           pyb::arg("snapshot_id"))
      .def_property_readonly("automatic_rebuilds", &HealthTracker::automatic_rebuilds)
      .def_property_readonly("stale_outcomes", &HealthTracker::stale_outcomes)
      .def_property_readonly("pending_retries", &HealthTracker::pending_retries)
      .def_property_readonly("options", &HealthTracker::options);
}

}  // namespace fcwarm::py
