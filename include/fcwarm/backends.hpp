/// \file
/// \brief SelectBackends(): which VMM backends to run VMs with, including "auto" (the one decision every
/// adapter — the server, Python, the CLI — uses).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fcwarm/firecracker_vmm.hpp"
#include "fcwarm/qemu_vmm.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief What to run VMs with.
struct BackendSelection {
  /// \brief Backend names, in order: "qemu", "firecracker", or "auto" (QEMU when ProbeQemu() passes on this
  /// host, else the fallback). Default: {"auto"}.
  std::vector<std::string> backends{"auto"};
  /// \brief Options of the QEMU backend. Default: QemuOptions{}.
  QemuOptions qemu;
  /// \brief Options of the Firecracker backend. Default: FirecrackerOptions{}.
  FirecrackerOptions firecracker;
  /// \brief What "auto" registers when QEMU cannot run here (e.g. the server's VM-less "none" backend);
  /// empty: nothing. Default: empty.
  std::function<std::shared_ptr<Vmm>()> auto_fallback;
};

/// \brief One decision SelectBackends() made.
struct BackendChoice {
  std::string requested;  ///< The name asked for ("auto", "qemu", ...).
  std::string kind;       ///< The backend registered for it (Vmm::Kind()), or empty when none was.
  std::string detail;     ///< Why: the probed version, or the probe's error when a backend was skipped.
  bool fell_back = false;  ///< True when "auto" could not use QEMU (kind is then the fallback's, or empty).
};

/// \brief The registry SelectBackends() built and how.
struct SelectedBackends {
  std::shared_ptr<VmmRegistry> registry;  ///< The backends to hand to Service::Open().
  std::vector<BackendChoice> choices;     ///< One entry per requested name, in order.
};

/// \brief Builds the VMM registry for a selection. A backend named explicitly must work here; "auto" never
/// fails: it registers QEMU when its probe passes, else BackendSelection::auto_fallback (if any), and says why.
/// \param selection What to run VMs with.
/// \return The registry and the decisions; InvalidArgument for an unknown name or an empty list;
/// NotFound/Unavailable (the probe's error, naming the backend) when an explicitly named backend cannot run.
Result<SelectedBackends> SelectBackends(const BackendSelection& selection);

}  // namespace fcwarm
