// Shared helpers of the pybind11 module: Status -> Python exceptions, Result unwrapping.
#pragma once

#include <pybind11/chrono.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "fcwarm/fcwarm.hpp"

namespace fcwarm::py {

namespace pyb = pybind11;

/// A C++ exception carrying a non-ok Status; translated to fcwarm.errors.* in Python.
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(Status st) : std::runtime_error(st.message()), status_(std::move(st)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

inline void Check(const Status& st) {
  if (!st.ok()) throw StatusError(st);
}

template <typename T>
T Unwrap(Result<T> r) {
  if (!r.ok()) throw StatusError(r.status());
  return std::move(r).value();
}

/// Every call into the library releases the GIL: library threads may call back into Python.
using Release = pyb::call_guard<pyb::gil_scoped_release>;

void BindTypes(pyb::module_& m);
void BindService(pyb::module_& m);
void BindImageRegistry(pyb::module_& m);
void BindSnapshotManager(pyb::module_& m);
void BindHealthTracker(pyb::module_& m);
void BindRestoreEngine(pyb::module_& m);
void BindBackends(pyb::module_& m);
#ifdef FCWARM_PY_TESTING
void BindTesting(pyb::module_& m);
#endif

}  // namespace fcwarm::py
