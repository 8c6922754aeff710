// SnapshotManager, including build listeners called from worker threads.
#include "py_common.hpp"

namespace fcwarm::py {

void BindSnapshotManager(pyb::module_& m) {
  pyb::class_<SnapshotManager>(m, "SnapshotManager", "Builds, lists, rebuilds and deletes runtime snapshots.")
      .def("create", [](SnapshotManager& s, const std::string& image_id) { return Unwrap(s.CreateSnapshot(image_id)); },
           Release(), pyb::arg("runtime_image_id"), "Starts a build; returns at once with state CREATING.")
      .def("get", [](const SnapshotManager& s, const std::string& id) { return Unwrap(s.Get(id)); }, Release(),
           pyb::arg("id"))
      .def(
          "list",
          [](const SnapshotManager& s, const std::string& image_id, std::optional<SnapshotState> state,
             bool include_deleted) {
            return Unwrap(s.List(SnapshotFilter{image_id, state, include_deleted}));
          },
          Release(), pyb::arg("runtime_image_id") = "", pyb::arg("state") = std::nullopt,
          pyb::arg("include_deleted") = false, "Snapshots, newest first.")
      .def("rebuild", [](SnapshotManager& s, const std::string& id) { return Unwrap(s.Rebuild(id)); }, Release(),
           pyb::arg("id"), "Schedules a new generation.")
      .def("delete", [](SnapshotManager& s, const std::string& id) { Check(s.Delete(id)); }, Release(),
           pyb::arg("id"), "Soft-deletes; files are collected when no VM maps them.")
      .def("wait_while_creating",
           [](const SnapshotManager& s, const std::string& id, std::chrono::milliseconds timeout) {
             return Unwrap(s.WaitWhileCreating(id, timeout));
           },
           Release(), pyb::arg("id"), pyb::arg("timeout"),
           "Blocks while the snapshot is CREATING, at most timeout (a timedelta or seconds as float).")
      .def("collect_garbage", [](SnapshotManager& s) { return Unwrap(s.CollectGarbage()); }, Release())
      .def_property_readonly("reconcile_report", &SnapshotManager::reconcile_report)
      .def("active_builds", &SnapshotManager::ActiveBuilds, Release())
      .def("list_repository", [](SnapshotManager& s) { return Unwrap(s.ListRepository()); }, Release(),
           "Generations in the shared snapshot repository (ConflictError without one).")
      .def("collect_repository",
           [](SnapshotManager& s, const RepositoryGcOptions& o) { return Unwrap(s.CollectRepository(o)); },
           Release(), pyb::arg("options"),
           "Repository GC: deletes generations beyond the retention rule that no node uses, then unused chunks.")
      .def(
          "add_build_listener",
          [](SnapshotManager& s, pyb::function fn) {
            auto held = HoldCallable(std::move(fn));
            pyb::gil_scoped_release release;
            return s.AddBuildListener([held](const BuildOutcome& o) {
              pyb::gil_scoped_acquire gil;
              try {
                (*held)(o);
              } catch (pyb::error_already_set& e) {
                e.discard_as_unraisable("fcwarm build listener");
              }
            });
          },
          pyb::arg("callback"),
          "Calls callback(BuildOutcome) after every build, on a library worker thread. Returns a token.")
      .def("remove_build_listener", &SnapshotManager::RemoveBuildListener, Release(), pyb::arg("token"));
}

}  // namespace fcwarm::py
