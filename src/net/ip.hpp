// Private: what both kinds of per-VM host networking share (netns.hpp for QEMU, tap.hpp for Firecracker):
// running iproute2, the gateway address of a VM's link, and questions about interfaces and namespaces.
//
// Error convention of src/net: whatever can fail returns Status or Result<T>, and the message names the
// field or the command; a question about what exists (InterfaceExists, NetnsExists) is a bool.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::net {

/// Runs `ip_binary args...` (argv, no shell) for at most `timeout`. Unavailable when it exits non-zero, with the
/// command and its trimmed output (at most 400 characters); the spawn error, with the command, when it cannot
/// run.
Status RunIp(const std::string& ip_binary, const std::vector<std::string>& args, std::chrono::milliseconds timeout);

/// The host-side address of a VM's link: "10.213.0.21" + "10.213.0.22/30" → "10.213.0.21/30". Empty when
/// `gateway` or `guest_ip_cidr` is empty (a VM without a network identity: no address to assign);
/// InvalidArgument naming `ip_cidr` or `gateway` when either is malformed (prefix length 8-30, IPv4 only).
Result<std::string> GatewayCidr(const std::string& gateway, const std::string& guest_ip_cidr);

/// True when a network interface with this name exists in the caller's namespace (false for "").
bool InterfaceExists(const std::string& name);
/// True when /run/netns/<name> exists (false for "").
bool NetnsExists(const std::string& name);
/// True when the interface has a carrier: for a TAP, a process holds it open.
bool InterfaceHasCarrier(const std::string& name);

/// Turns IPv6 off on the interface `name` of the caller's namespace (net.ipv6.conf.<name>.disable_ipv6 = 1): it
/// gets no link-local address and the kernel drops the IPv6 packets it receives. For the host end of a VM's
/// link, before it is set up: fcwarm's rules are IPv4 only, so over IPv6 a guest would reach the host's services
/// on the link-local address of its gateway (docs/networking.md, "Isolation"). Ok when the host has no IPv6.
Status DisableIpv6(const std::string& name);

/// Deletes the interface `name` (a veth: both ends) when it exists in the caller's namespace. True when one
/// was deleted; the `ip` error otherwise.
Result<bool> DeleteInterfaceIfPresent(const std::string& ip_binary, const std::string& name,
                                      std::chrono::milliseconds timeout);
/// Deletes the network namespace `name` (with the devices in it) when /run/netns/<name> exists. True when one
/// was deleted; the `ip` error otherwise.
Result<bool> DeleteNetnsIfPresent(const std::string& ip_binary, const std::string& name,
                                  std::chrono::milliseconds timeout);

}  // namespace fcwarm::net
