// RestoreEngine and live VM handles (guest access).
#include "py_common.hpp"

namespace fcwarm::py {

void BindRestoreEngine(pyb::module_& m) {
  pyb::class_<ExecResult>(m, "ExecResult", "Result of a command run in the guest.")
      .def_readonly("exit_code", &ExecResult::exit_code)
      .def_property_readonly("stdout", [](const ExecResult& r) { return pyb::bytes(r.stdout_data); })
      .def_property_readonly("stderr", [](const ExecResult& r) { return pyb::bytes(r.stderr_data); })
      .def_readonly("truncated", &ExecResult::truncated);

  pyb::class_<Vm, std::shared_ptr<Vm>>(m, "Vm", "A running VM (from RestoreEngine.handle).")
      .def_property_readonly("pid", &Vm::pid)
      .def("is_alive", &Vm::IsAlive, Release())
      .def_property_readonly("console_log", &Vm::console_log)
      .def(
          "ping",
          [](Vm& vm, std::chrono::milliseconds timeout) {
            auto r = Unwrap(vm.guest().Ping(timeout));
            return std::map<std::string, std::string>{{"agent_version", r.agent_version},
                                                      {"boot_id", r.boot_id},
                                                      {"hostname", r.hostname},
                                                      {"uptime_ms", std::to_string(r.uptime_ms)}};
          },
          Release(), pyb::arg("timeout") = std::chrono::milliseconds(5000), "Pings the guest agent.")
      .def(
          "exec",
          [](Vm& vm, std::vector<std::string> argv, std::chrono::milliseconds timeout) {
            ExecRequest req;
            req.argv = std::move(argv);
            req.timeout = timeout;
            return Unwrap(vm.guest().Exec(req, timeout + std::chrono::seconds(5)));
          },
          Release(), pyb::arg("argv"), pyb::arg("timeout") = std::chrono::milliseconds(10000),
          "Runs a command in the guest (argv, no shell).");

  pyb::class_<RestoreEngine>(m, "RestoreEngine", "Returns ready VMs: warm when possible, cold otherwise.")
      .def(
          "provision",
          [](RestoreEngine& e, const std::string& image_id, const std::string& name,
             std::optional<std::chrono::milliseconds> wait_for_creating, bool force_cold) {
            ProvisionRequest r;
            r.runtime_image_id = image_id;
            r.name = name;
            r.wait_for_creating = wait_for_creating;
            r.force_cold = force_cold;
            return Unwrap(e.Provision(r));
          },
          Release(), pyb::arg("runtime_image_id"), pyb::arg("name") = "",
          pyb::arg("wait_for_creating") = std::nullopt, pyb::arg("force_cold") = false,
          "Starts a VM of the image and returns its VmRecord (boot_method, fallback_reason, timings).")
      .def("stop", [](RestoreEngine& e, const std::string& id) { Check(e.Stop(id)); }, Release(), pyb::arg("vm_id"))
      .def("destroy", [](RestoreEngine& e, const std::string& id) { Check(e.Destroy(id)); }, Release(),
           pyb::arg("vm_id"), "Stops the VM and releases its disk, network and address.")
      .def("get", [](const RestoreEngine& e, const std::string& id) { return Unwrap(e.Get(id)); }, Release(),
           pyb::arg("vm_id"))
      .def("list", [](const RestoreEngine& e, bool d) { return Unwrap(e.List(d)); }, Release(),
           pyb::arg("include_destroyed") = false)
      .def("handle", [](const RestoreEngine& e, const std::string& id) { return Unwrap(e.Handle(id)); }, Release(),
           pyb::arg("vm_id"), "The live VM (for guest access).")
      .def("measured_cold_boot_ms", &RestoreEngine::MeasuredColdBootMs, Release(), pyb::arg("runtime_image_id"));
}

}  // namespace fcwarm::py
