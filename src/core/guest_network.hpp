// Private: the network settings every VM with a network identity gets (egress, resolvers, registry settings),
// checked once when the engine or the snapshot manager is created, and the address pool both allocate from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fcwarm/options.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace SQLite {
class Database;
}

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
Result<GuestNetwork> ResolveGuestNetwork(const GuestNetworkOptions& opts);
/// The same for RestoreOptions' network fields.
Result<GuestNetwork> ResolveGuestNetwork(const RestoreOptions& opts);
/// RestoreOptions' network fields as GuestNetworkOptions (what Service::Open gives snapshot builds).
GuestNetworkOptions NetworkOptionsOf(const RestoreOptions& opts);

/// Takes the lowest free /30 of the pool (`pool_base` in host byte order, `pool_size` blocks) for `holder` (a
/// VM id, or "build:<snapshot id>" for a build VM) and fills `net`'s index, MAC, gateway and address.
/// ResourceExhausted when the pool is full. Runs inside the caller's transaction.
Status AllocateAddress(SQLite::Database& db, uint32_t pool_base, int64_t pool_size, const std::string& holder,
                       NetworkIdentity* net);
/// The pool base "a.b.c.d" in host byte order, or 0 when it is not an IPv4 address.
uint32_t PoolBase(const std::string& address_pool_base);

/// The identity request that makes a VM with network identity `net` unique (hostname, MAC, address, gateway,
/// fresh entropy, the host's clock) and, for a container runtime image (`docker`), gives it `net`'s resolvers and
/// the registry settings of `g` (a VM-only image may have no writable /etc and has no daemon that pulls).
IdentityRequest IdentityFor(const NetworkIdentity& net, const GuestNetwork& g, bool docker);

/// The host of an "http(s)://host[:port]" registry URL, or InvalidArgument naming `field`.
Result<std::string> RegistryUrlHost(const std::string& url, const std::string& field);

}  // namespace fcwarm::internal
