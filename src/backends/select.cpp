// SelectBackends: the one place that decides which VMM backends run VMs ("auto" included).
#include "fcwarm/backends.hpp"

namespace fcwarm {

Result<SelectedBackends> SelectBackends(const BackendSelection& selection) {
  if (selection.backends.empty()) return Status::InvalidArgument("backends: name at least one backend");
  SelectedBackends out;
  out.registry = std::make_shared<VmmRegistry>();
  for (const auto& name : selection.backends) {
    BackendChoice choice{name, "", "", false};
    if (name == "qemu" || name == "auto") {
      Status probe = ProbeQemu(selection.qemu);
      if (probe.ok()) {
        out.registry->Add(std::shared_ptr<Vmm>(MakeQemuVmm(selection.qemu)));
        choice.kind = "qemu";
        choice.detail = "accelerator " + selection.qemu.accelerator;
      } else if (name == "qemu") {
        return probe.WithContext("backend qemu");
      } else {
        choice.detail = "qemu cannot run here: " + probe.message();
        choice.fell_back = true;
        if (selection.auto_fallback) {
          if (auto vmm = selection.auto_fallback()) {
            choice.kind = vmm->Kind();
            out.registry->Add(std::move(vmm));
          }
        }
      }
    } else if (name == "firecracker") {
      auto version = ProbeFirecracker(selection.firecracker.binary);
      if (!version.ok()) return version.status().WithContext("backend firecracker");
      out.registry->Add(std::shared_ptr<Vmm>(MakeFirecrackerVmm(selection.firecracker)));
      choice.kind = "firecracker";
      choice.detail = "version " + version->text;
    } else {
      std::string shown = name.substr(0, 64);
      return Status::InvalidArgument("backends: unknown backend '" + shown + "' (auto, qemu or firecracker)");
    }
    out.choices.push_back(std::move(choice));
  }
  return out;
}

}  // namespace fcwarm
