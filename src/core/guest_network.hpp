// Private: the network settings every VM gets from RestoreOptions (egress, resolvers, registry settings),
// checked once when the engine is created.
#pragma once

#include <string>
#include <vector>

#include "fcwarm/options.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::internal {

/// RestoreOptions' network settings, validated and resolved.
struct GuestNetwork {
  std::string egress;                     // policy text, or empty (no egress rules)
  std::vector<std::string> egress_allow;  // registry mirror hosts (IPv4), allowed under every policy
  std::vector<std::string> dns;           // resolvers for guests (empty: keep the guest's)
  std::vector<std::string> egress_deny;   // the guest address pool: other VMs are never reachable
  GuestDockerSettings docker;             // registry settings for docker runtime images
  bool has_docker_settings = false;       // any mirror or insecure registry configured
};

/// Validates the options (InvalidArgument naming `egress`, `dns[i]`, `registry_mirrors[i]` or
/// `insecure_registries[i]`) and resolves the defaults: with egress set and no resolvers given, the host's.
Result<GuestNetwork> ResolveGuestNetwork(const RestoreOptions& opts);

/// The host of an "http(s)://host[:port]" registry URL, or InvalidArgument naming `field`.
Result<std::string> RegistryUrlHost(const std::string& url, const std::string& field);

}  // namespace fcwarm::internal
