#include "core/guest_network.hpp"

#include <arpa/inet.h>

#include <chrono>
#include <cstdio>

#include "core/internal.hpp"
#include "net/egress.hpp"
#include "net/ipv4.hpp"
#include "net/ports.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"

namespace fcwarm::internal {

namespace {

std::string MacFor(int64_t idx) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "02:fc:%02x:%02x:%02x:%02x", static_cast<unsigned>((idx >> 24) & 0xff),
                static_cast<unsigned>((idx >> 16) & 0xff), static_cast<unsigned>((idx >> 8) & 0xff),
                static_cast<unsigned>(idx & 0xff));
  return buf;
}

std::string Ipv4(uint32_t host_order) {
  in_addr a{htonl(host_order)};
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return buf;
}

}  // namespace

uint32_t PoolBase(const std::string& address_pool_base) {
  in_addr a{};
  if (::inet_pton(AF_INET, address_pool_base.c_str(), &a) != 1) return 0;
  return ntohl(a.s_addr);
}

Status AllocateAddress(SQLite::Database& db, uint32_t pool_base, int64_t pool_size, const std::string& holder,
                       NetworkIdentity* net) {
  int64_t idx = detail::LowestFreeAddressIndex(db);
  if (idx >= pool_size) {
    return Status::ResourceExhausted("address pool exhausted (" + std::to_string(pool_size) + " VMs)");
  }
  uint32_t block = pool_base + static_cast<uint32_t>(idx) * 4;
  net->index = idx;
  net->mac = MacFor(idx);
  net->gateway = Ipv4(block + 1);
  net->ip_cidr = Ipv4(block + 2) + "/30";
  detail::AllocateAddress(db, idx, holder, net->mac, net->ip_cidr, util::NowMillis());
  return Status::Ok();
}

GuestNetworkOptions NetworkOptionsOf(const RestoreOptions& opts) {
  GuestNetworkOptions n;
  n.address_pool_base = opts.address_pool_base;
  n.address_pool_size = opts.address_pool_size;
  n.allocate_network = opts.allocate_network;
  n.egress = opts.egress;
  n.dns = opts.dns;
  n.registry_mirrors = opts.registry_mirrors;
  n.insecure_registries = opts.insecure_registries;
  return n;
}

Result<GuestNetwork> ResolveGuestNetwork(const RestoreOptions& opts) {
  return ResolveGuestNetwork(NetworkOptionsOf(opts));
}

Result<std::string> RegistryUrlHost(const std::string& url, const std::string& field) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument(field + ": '" + url.substr(0, 128) + "' " + why);
  };
  std::string rest;
  if (url.rfind("http://", 0) == 0) {
    rest = url.substr(7);
  } else if (url.rfind("https://", 0) == 0) {
    rest = url.substr(8);
  } else {
    return bad("is not an http:// or https:// URL");
  }
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.find_first_of("/?#@ ") != std::string::npos) {
    return bad("must be scheme://host[:port] without path, query or credentials");
  }
  auto colon = rest.rfind(':');
  std::string host = colon == std::string::npos ? rest : rest.substr(0, colon);
  if (colon != std::string::npos) {
    auto port = net::ParsePortNumber(rest.substr(colon + 1), "port", field + ": '" + url.substr(0, 128) + "': ");
    if (!port.ok()) return port.status();
  }
  if (host.empty()) return bad("has no host");
  return host;
}

Result<GuestNetwork> ResolveGuestNetwork(const GuestNetworkOptions& opts) {
  GuestNetwork g;
  if (!opts.egress.empty()) {
    auto policy = net::ParseEgressPolicy(opts.egress, "egress");
    if (!policy.ok()) return policy.status();
    g.egress = policy->ToString();
    auto pool = net::AddressPoolCidr(opts.address_pool_base, opts.address_pool_size);
    if (!pool.ok()) return pool.status().WithContext("address_pool_base");
    g.egress_deny.push_back(pool->ToString());
  }
  for (size_t i = 0; i < opts.dns.size(); ++i) {
    if (!net::ParseIpv4(opts.dns[i])) {
      return Status::InvalidArgument("dns[" + std::to_string(i) + "]: '" + opts.dns[i].substr(0, 64) +
                                     "' is not an IPv4 address");
    }
  }
  if (opts.dns.size() > 3) return Status::InvalidArgument("dns: at most 3 resolvers (resolv.conf's limit)");
  g.dns = opts.dns;
  if (g.dns.empty() && !g.egress.empty()) {
    g.dns = net::HostResolvers();
    if (g.dns.size() > 3) g.dns.resize(3);
  }
  for (size_t i = 0; i < opts.registry_mirrors.size(); ++i) {
    const std::string field = "registry_mirrors[" + std::to_string(i) + "]";
    auto host = RegistryUrlHost(opts.registry_mirrors[i], field);
    if (!host.ok()) return host.status();
    // Egress rules are by address: a mirror named by a DNS name is reachable only when the policy allows it.
    if (net::ParseIpv4(*host)) g.egress_allow.push_back(*host);
  }
  for (size_t i = 0; i < opts.insecure_registries.size(); ++i) {
    const auto& r = opts.insecure_registries[i];
    bool ok = r.find('/') != std::string::npos
                  ? net::ParseCidr(r, "insecure_registries").ok()
                  : !r.empty() && r.size() <= 255 &&
                        r.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") ==
                            std::string::npos;
    if (!ok) {
      return Status::InvalidArgument("insecure_registries[" + std::to_string(i) + "]: '" + r.substr(0, 64) +
                                     "' is neither host[:port] nor an IPv4 CIDR");
    }
  }
  g.docker.registry_mirrors = opts.registry_mirrors;
  g.docker.insecure_registries = opts.insecure_registries;
  g.has_docker_settings = !opts.registry_mirrors.empty() || !opts.insecure_registries.empty();
  return g;
}

IdentityRequest IdentityFor(const NetworkIdentity& net, const GuestNetwork& g, bool docker) {
  IdentityRequest id;
  id.hostname = net.hostname;
  id.mac = net.mac;
  id.ip_cidr = net.ip_cidr;
  id.gateway = net.gateway;
  id.entropy = RandomBytes(64);
  id.wall_clock_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  if (docker) {
    id.dns = net.dns;
    if (g.has_docker_settings) id.docker = g.docker;
  }
  return id;
}

}  // namespace fcwarm::internal
