// Private: published ports — host address:port forwarded to guest address:port (docs/networking.md,
// "Published ports").
//
// Docker's `-p` syntax, IPv4 only: "[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/tcp|/udp]". Without HOST_IP the
// default bind address (127.0.0.1 unless configured) is used; without HOST_PORT ("80", "127.0.0.1::80") a
// free host port is chosen by AssignHostPorts(), as Docker does. Port ranges and IPv6 are refused.
//
// A VM's rules, all tagged "<tag_prefix><vm id>:ports":
//   nat    FCWARM-DNAT    [-d HOST_IP] -p P --dport HOST_PORT  DNAT --to-destination GUEST:CONTAINER_PORT
//                         (jumped to from PREROUTING and OUTPUT for local destinations: outside and host
//                         processes alike, 127.0.0.1 included);
//   filter FCWARM-PORTS   -o <veth> -d GUEST -p P --dport CONTAINER_PORT, connections that were DNATed:
//   ACCEPT;
//                         -i <veth> -s GUEST -p P --sport CONTAINER_PORT, replies: ACCEPT;
// and when a mapping is reachable on 127.0.0.1 (HOST_IP 127.x or 0.0.0.0), as Docker does without its
// userland proxy: route_localnet=1 on the veth, nat FCWARM-POSTROUTING -s 127.0.0.0/8 -o <veth> MASQUERADE
// (the guest answers the gateway, not its own loopback), and filter FCWARM-INPUT -i <veth> -d 127.0.0.0/8
// that is not a reply: DROP (route_localnet must not let the guest reach the host's loopback services).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "net/iptables.hpp"

namespace fcwarm::net {

/// Transport protocol of a published port.
enum class Protocol { kTcp, kUdp };

/// "tcp" or "udp".
std::string_view ProtocolName(Protocol p);

/// One published port.
struct PortMapping {
  std::string host_ip = "127.0.0.1";  // "0.0.0.0": every address of the host
  uint16_t host_port = 0;             // 0 until AssignHostPorts() picked one (spec without a host port)
  uint16_t container_port = 0;        // 1-65535
  Protocol protocol = Protocol::kTcp;

  /// "127.0.0.1:8080:80/tcp" (host port "" while 0).
  std::string ToString() const;
  bool operator==(const PortMapping& o) const {
    return host_ip == o.host_ip && host_port == o.host_port && container_port == o.container_port &&
           protocol == o.protocol;
  }
};

/// "80" → 80: one port number, 1-65535 (no ranges). InvalidArgument starting with `prefix`, naming `what`
/// ("host port", "registry port", ...): empty, not a number, out of range.
Result<uint16_t> ParsePortNumber(std::string_view s, const std::string& what, const std::string& prefix);

/// Parses one spec. InvalidArgument starting with `field`, quoting the spec and naming what is wrong.
Result<PortMapping> ParsePort(std::string_view spec, const std::string& default_host_ip = "127.0.0.1",
                              std::string_view field = "ports");

/// Parses a request's list; the field of entry i is "<field>[i]". Two entries that would take the same host
/// port (PortsConflict) are refused, naming both.
Result<std::vector<PortMapping>> ParsePorts(const std::vector<std::string>& specs,
                                            const std::string& default_host_ip = "127.0.0.1",
                                            std::string_view field = "ports");

/// True when both take the same host port: same protocol and port, and the same address or either is 0.0.0.0.
/// Mappings without a host port never conflict.
bool PortsConflict(const PortMapping& a, const PortMapping& b);

/// Checks, before anything is started, that every host port can be taken: FailedPrecondition (HTTP 409)
/// naming the port when fcwarm published it already (`published`: the mappings of every running container) or
/// another program holds it (a trial bind() of address, port and protocol fails with EADDRINUSE);
/// InvalidArgument when the address is not one of this host's. Mappings with host port 0 are skipped.
Status CheckPortsFree(const std::vector<PortMapping>& ports, const std::vector<PortMapping>& published);

/// Gives every mapping with host port 0 a free port (from the kernel's ephemeral range, checked against
/// `published` and the other mappings), then runs CheckPortsFree. A port is free when checked: another
/// program may still take it before the rules exist (as with Docker).
Status AssignHostPorts(std::vector<PortMapping>* ports, const std::vector<PortMapping>& published);

/// One VM's published ports.
struct PublishRequest {
  std::string vm_id;               // identifies the rules (1-64 of [A-Za-z0-9_.-])
  std::string host_veth;           // host end of the VM's veth pair
  std::string guest_ip;            // the guest's IPv4 address, e.g. "10.213.0.22"
  std::vector<PortMapping> ports;  // every host port set (AssignHostPorts)
};

/// The rules PublishPorts adds (without their tag). Validates every field (InvalidArgument naming it).
Result<std::vector<NewRule>> BuildPortRules(const PublishRequest& req, const IptablesOptions& opts);

/// Adds the forwarding (replacing the VM's earlier publication: calling it again changes the set atomically),
/// sets route_localnet on the veth when a mapping serves 127.0.0.1, and turns IPv4 forwarding on when one is
/// bound to a non-loopback address. Does not check that the ports are free (CheckPortsFree does, earlier).
/// The handle deletes the rules and restores route_localnet; so do UnpublishPorts() and SweepRules() (rules
/// only; route_localnet goes with the veth).
/// Thread safety: safe to call concurrently, also from several processes.
Result<std::unique_ptr<RuleHandle>> PublishPorts(const PublishRequest& req, const IptablesOptions& opts = {});

/// Deletes the VM's published-port rules (for a VM whose handle is gone). Ok when none is left.
Status UnpublishPorts(const std::string& vm_id, const IptablesOptions& opts = {});

}  // namespace fcwarm::net
