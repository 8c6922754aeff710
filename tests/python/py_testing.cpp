// Test-only additions to the Python module (compiled only into the test build of fcwarm._core): the scripted
// FakeVmm from tests/support, so pytest can drive the real library without a VMM.
#include "py_common.hpp"
#include "support/fake_vmm.hpp"

namespace fcwarm::py {

void BindTesting(pyb::module_& m) {
  auto t = m.def_submodule("testing", "Test doubles (test builds only).");
  using testing::FakeVmm;
  pyb::class_<FakeVmm, Vmm, std::shared_ptr<FakeVmm>>(t, "FakeVmm", "Scripted VMM double with failure injection.")
      .def(pyb::init<std::string>(), pyb::arg("kind") = "fake")
      .def_property("fail_cold_boots", [](FakeVmm& f) { return f.script.fail_cold_boots.load(); },
                    [](FakeVmm& f, int v) { f.script.fail_cold_boots = v; })
      .def_property("fail_restores", [](FakeVmm& f) { return f.script.fail_restores.load(); },
                    [](FakeVmm& f, int v) { f.script.fail_restores = v; })
      .def_property("fail_verifies", [](FakeVmm& f) { return f.script.fail_verifies.load(); },
                    [](FakeVmm& f, int v) { f.script.fail_verifies = v; })
      .def_property("fail_snapshots", [](FakeVmm& f) { return f.script.fail_snapshots.load(); },
                    [](FakeVmm& f, int v) { f.script.fail_snapshots = v; })
      .def_property("build_delay_ms", [](FakeVmm& f) { return f.script.build_delay_ms.load(); },
                    [](FakeVmm& f, int v) { f.script.build_delay_ms = v; })
      .def_property("restore_delay_ms", [](FakeVmm& f) { return f.script.restore_delay_ms.load(); },
                    [](FakeVmm& f, int v) { f.script.restore_delay_ms = v; })
      .def_property("kill_after_restore", [](FakeVmm& f) { return f.script.kill_after_restore.load(); },
                    [](FakeVmm& f, int v) { f.script.kill_after_restore = v; })
      .def_property("fail_docker", [](FakeVmm& f) { return f.script.fail_docker.load(); },
                    [](FakeVmm& f, int v) { f.script.fail_docker = v; },
                    "The next N Docker API requests fail (the guest's daemon cannot be reached).")
      .def("set_host_version", &FakeVmm::SetHostVersion, pyb::arg("version"))
      .def_property_readonly("cold_boots", [](FakeVmm& f) { return f.cold_boots.load(); })
      .def_property_readonly("restores", [](FakeVmm& f) { return f.restores.load(); })
      .def_property_readonly("live", [](FakeVmm& f) { return f.live.load(); })
      .def_property_readonly("max_live", [](FakeVmm& f) { return f.max_live.load(); })
      .def_property_readonly("docker_requests", [](FakeVmm& f) { return f.docker_requests.load(); },
                             "Docker API requests served by the fake guests' daemons.")
      .def_property_readonly("pulls", [](FakeVmm& f) { return f.pulls.load(); },
                             "Image pulls the fake guests' daemons were asked for.");
}

}  // namespace fcwarm::py
