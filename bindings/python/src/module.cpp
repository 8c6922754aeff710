// fcwarm._core: the pybind11 module behind the `fcwarm` package.
#include "py_common.hpp"

namespace fcwarm::py {
namespace {

void TranslateStatus(const StatusError& e) {
  pyb::gil_scoped_acquire gil;
  auto errors = pyb::module_::import("fcwarm.errors");
  const char* cls = "Error";
  switch (e.status().code()) {
    case StatusCode::kInvalidArgument: cls = "InvalidArgumentError"; break;
    case StatusCode::kNotFound: cls = "NotFoundError"; break;
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kResourceExhausted: cls = "ConflictError"; break;
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded: cls = "UnavailableError"; break;
    default: cls = "Error"; break;
  }
  pyb::object type = errors.attr(cls);
  pyb::object exc = type(e.status().message());
  exc.attr("code") = std::string(StatusCodeName(e.status().code()));
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
