#include "backends/host_rules.hpp"

namespace fcwarm {

Result<HostRules> PlanHostRules(const NetworkIdentity& network, const std::string& vm_id, const std::string& host_dev,
                                const std::string& no_link_why) {
  HostRules rules;
  if (host_dev.empty() || network.index < 0) {
    if (!network.ports.empty()) {
      return Status::FailedPrecondition("ports: vm " + vm_id + " has no network link to the host to publish on (" +
                                        no_link_why + ")");
    }
    return rules;
  }
  std::string guest_ip = network.ip_cidr.substr(0, network.ip_cidr.find('/'));
  if (!network.egress.empty()) {
    auto policy = net::ParseEgressPolicy(network.egress, "egress");
    if (!policy.ok()) return policy.status();
    auto& e = rules.egress.emplace();
    e.vm_id = vm_id;
    e.host_veth = host_dev;
    e.guest_ip = guest_ip;
    e.policy = *policy;
    e.allow = network.egress_allow;
    e.dns_servers = network.dns;
    e.never = network.egress_deny;
  }
  if (!network.ports.empty()) {
    auto ports = net::ParsePorts(network.ports, "127.0.0.1", "network.ports");
    if (!ports.ok()) return ports.status();
    auto& p = rules.ports.emplace();
    p.vm_id = vm_id;
    p.host_veth = host_dev;
    p.guest_ip = guest_ip;
    p.ports = std::move(ports).value();
  }
  return rules;
}

}  // namespace fcwarm
