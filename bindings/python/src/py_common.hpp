// Shared helpers of the pybind11 module: Status -> Python exceptions, Result unwrapping.
#pragma once

#include <pybind11/chrono.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fcwarm/fcwarm.hpp"

namespace fcwarm::py {

/// Gives an enum bound with pybind11 the stable lower-case name (fcwarm::ToString) as `str()` and `.label`,
/// instead of pybind11's default "Type.NAME" text.
template <typename E>
void AddStr(pybind11::enum_<E>& e) {
  e.attr("__str__") = pybind11::cpp_function([](E v) { return std::string(ToString(v)); }, pybind11::name("__str__"),
                                             pybind11::is_method(e));
  e.def_property_readonly("label", [](E v) { return std::string(ToString(v)); }, "Stable lower-case name.");
}

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

/// Holds a Python callable for the library; destroys it with the GIL held, whatever thread drops the last
/// reference (the library copies and destroys its std::function objects on its own threads).
inline std::shared_ptr<pyb::function> HoldCallable(pyb::function fn) {
  return std::shared_ptr<pyb::function>(new pyb::function(std::move(fn)), [](pyb::function* f) {
    pyb::gil_scoped_acquire gil;
    delete f;
  });
}

// ---- argument conversion with errors that name the field (GIL held) --------------------------------------

inline std::string TypeName(pyb::handle h) { return Py_TYPE(h.ptr())->tp_name; }

/// A str argument (None allowed when `allow_none`: returns ""). TypeError naming `field` otherwise.
inline std::string ToStr(pyb::handle h, const std::string& field, bool allow_none) {
  if (allow_none && h.is_none()) return {};
  if (!pyb::isinstance<pyb::str>(h)) {
    throw pyb::type_error(field + ": expected str" + (allow_none ? " or None" : "") + ", got " + TypeName(h));
  }
  return h.cast<std::string>();
}

/// An argv: a list or tuple of str (None: empty). A single string is refused: no shell ever splits it.
inline std::vector<std::string> ToArgv(pyb::handle h, const std::string& field) {
  std::vector<std::string> out;
  if (h.is_none()) return out;
  if (pyb::isinstance<pyb::str>(h) || pyb::isinstance<pyb::bytes>(h)) {
    throw pyb::type_error(field + ": expected a list of str (one item per argument, no shell), got a single " +
                          TypeName(h));
  }
  if (!pyb::isinstance<pyb::list>(h) && !pyb::isinstance<pyb::tuple>(h)) {
    throw pyb::type_error(field + ": expected a list of str, got " + TypeName(h));
  }
  auto seq = pyb::reinterpret_borrow<pyb::sequence>(h);
  out.reserve(seq.size());
  for (size_t i = 0; i < seq.size(); ++i) {
    pyb::object item = seq[i];
    if (!pyb::isinstance<pyb::str>(item)) {
      throw pyb::type_error(field + "[" + std::to_string(i) + "]: expected str, got " + TypeName(item));
    }
    out.push_back(item.cast<std::string>());
  }
  return out;
}

/// A mapping of str to str (None: empty).
inline std::map<std::string, std::string> ToStringMap(pyb::handle h, const std::string& field) {
  std::map<std::string, std::string> out;
  if (h.is_none()) return out;
  auto mapping = pyb::module_::import("collections.abc").attr("Mapping");
  if (!pyb::isinstance(h, mapping)) throw pyb::type_error(field + ": expected a dict of str to str, got " + TypeName(h));
  for (auto kv : h.attr("items")()) {
    auto pair = pyb::reinterpret_borrow<pyb::tuple>(kv);
    pyb::handle k = pair[0];
    pyb::handle v = pair[1];
    if (!pyb::isinstance<pyb::str>(k)) throw pyb::type_error(field + ": keys must be str, got " + TypeName(k));
    auto key = k.cast<std::string>();
    if (!pyb::isinstance<pyb::str>(v)) {
      throw pyb::type_error(field + "['" + key.substr(0, 64) + "']: expected str, got " + TypeName(v));
    }
    out.emplace(std::move(key), v.cast<std::string>());
  }
  return out;
}

/// A duration given as datetime.timedelta or as seconds (int or float), like the chrono arguments of the rest
/// of the API, but checked: negative, NaN, infinite or absurdly large values raise InvalidArgumentError naming
/// `field` (the plain chrono conversion would overflow).
inline std::chrono::milliseconds ToMillis(pyb::handle h, const std::string& field) {
  double seconds = 0;
  auto timedelta = pyb::module_::import("datetime").attr("timedelta");
  if (pyb::isinstance(h, timedelta)) {
    seconds = h.attr("total_seconds")().cast<double>();
  } else if (!pyb::isinstance<pyb::bool_>(h) && (pyb::isinstance<pyb::int_>(h) || pyb::isinstance<pyb::float_>(h))) {
    seconds = h.cast<double>();
  } else {
    throw pyb::type_error(field + ": expected seconds (int or float) or a datetime.timedelta, got " + TypeName(h));
  }
  constexpr double kMaxSeconds = 1e9;  // ~31 years; keeps deadline arithmetic far from overflow
  if (!std::isfinite(seconds) || seconds < 0 || seconds > kMaxSeconds) {
    throw StatusError(Status::InvalidArgument(field + ": must be a finite duration between 0 and 1e9 seconds"));
  }
  return std::chrono::milliseconds(std::llround(seconds * 1000.0));
}

void BindTypes(pyb::module_& m);
void BindService(pyb::module_& m);
void BindImageRegistry(pyb::module_& m);
void BindSnapshotManager(pyb::module_& m);
void BindHealthTracker(pyb::module_& m);
void BindRestoreEngine(pyb::module_& m);
void BindContainers(pyb::module_& m);
void BindBackends(pyb::module_& m);
#ifdef FCWARM_PY_TESTING
void BindTesting(pyb::module_& m);
#endif

}  // namespace fcwarm::py
