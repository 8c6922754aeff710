// ImageRegistry.
#include "py_common.hpp"

namespace fcwarm::py {

void BindImageRegistry(pyb::module_& m) {
  m.def("runtime_image_from_artifacts",
        [](const std::string& kind, const std::string& dir, const std::string& backend) {
          return Unwrap(RuntimeImageFromArtifacts(kind, dir, backend));
        },
        pyb::arg("kind"), pyb::arg("dir"), pyb::arg("backend") = "qemu",
        "The (unregistered) RuntimeImage of guest artifacts built by this project: kind 'minimal' "
        "(guest/build-artifacts.sh) or 'docker' (guest/build-docker-image.sh). NotFoundError names a missing file.");
  pyb::class_<ImageRegistry>(m, "ImageRegistry", "Registers, lists and removes runtime images.")
      .def("register", [](ImageRegistry& r, RuntimeImage img) { return Unwrap(r.Register(std::move(img))); },
           Release(), pyb::arg("image"), "Validates and stores an image; returns it with its id.")
      .def("get", [](const ImageRegistry& r, const std::string& id) { return Unwrap(r.Get(id)); }, Release(),
           pyb::arg("id"))
      .def("get_by_name", [](const ImageRegistry& r, const std::string& n) { return Unwrap(r.GetByName(n)); },
           Release(), pyb::arg("name"))
      .def("list", [](const ImageRegistry& r) { return Unwrap(r.List()); }, Release(), "Images, newest first.")
      .def("remove", [](ImageRegistry& r, const std::string& id) { Check(r.Remove(id)); }, Release(),
           pyb::arg("id"), "Removes an image with no snapshots and no live VMs.");
}

}  // namespace fcwarm::py
