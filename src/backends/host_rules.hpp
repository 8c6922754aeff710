// Private: the host-side rules of one VM (egress policy, published ports) as its backend applies them on the
// host end of the VM's link: QEMU's veth, Firecracker's TAP (docs/networking.md).
#pragma once

#include <optional>
#include <string>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"
#include "net/egress.hpp"
#include "net/ports.hpp"

namespace fcwarm {

/// Host-side rules of one VM.
struct HostRules {
  std::optional<net::EgressRequest> egress;  // what the guest may reach
  std::optional<net::PublishRequest> ports;  // what the host forwards to it
};

/// The rules of `network` (LaunchSpec::network of VM `vm_id`) on `host_dev`, the host end of the VM's link in
/// the root namespace. Without one (`host_dev` empty: a VM without a network identity, or a link that does not
/// reach the root namespace) there is nothing to filter or forward: no rules, and published ports are refused
/// (FailedPrecondition, `no_link_why` saying why there is no link). InvalidArgument for a malformed policy or
/// port.
Result<HostRules> PlanHostRules(const NetworkIdentity& network, const std::string& vm_id, const std::string& host_dev,
                                const std::string& no_link_why);

}  // namespace fcwarm
