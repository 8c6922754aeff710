// fcwarm._core: the pybind11 module behind the `fcwarm` package.
#include "py_common.hpp"

namespace fcwarm::py {
namespace {

void TranslateStatus(const StatusError& e) {
  pyb::gil_scoped_acquire gil;
  auto errors = pyb::module_::import("fcwarm.errors");
  const auto& info = StatusInfo(e.status().code());
  const char* cls = info.python_exception.empty() ? "Error" : info.python_exception.data();
  pyb::object type = errors.attr(cls);
  pyb::object exc = type(e.status().message());
  exc.attr("code") = std::string(info.name);
  PyErr_SetObject(type.ptr(), exc.ptr());
}

}  // namespace
}  // namespace fcwarm::py

PYBIND11_MODULE(_core, m) {
  using namespace fcwarm::py;
  m.doc() = "fcwarm core library: warm boot for microVM platforms (C++ bindings).";
  m.attr("__version__") = std::string(fcwarm::Version());
  m.attr("GUEST_PROTOCOL_VERSION") = fcwarm::kGuestProtocolVersion;
  pyb::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      TranslateStatus(e);
    }
  });
  m.def(
      "status_table",
      [] {
        pyb::list rows;
        for (const auto& r : fcwarm::StatusTable()) {
          pyb::dict d;
          d["name"] = std::string(r.name);
          d["http_status"] = r.http_status;
          d["python_exception"] = std::string(r.python_exception);
          d["cli_exit_code"] = r.cli_exit_code;
          rows.append(d);
        }
        return rows;
      },
      "The library's one status table: for each error code name, its HTTP status, Python exception class "
      "(in fcwarm.errors) and CLI exit code.");
  BindTypes(m);
  BindBackends(m);
  BindImageRegistry(m);
  BindSnapshotManager(m);
  BindHealthTracker(m);
  BindRestoreEngine(m);
  BindContainers(m);
  BindService(m);
#ifdef FCWARM_PY_TESTING
  BindTesting(m);
#endif
}
