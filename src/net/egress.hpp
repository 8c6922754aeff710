// Private: per-VM egress policy on the host — forwarding, NAT and filter rules for a guest behind its veth
// (docs/networking.md, "Egress").
//
// A VM's rules, all tagged "<tag_prefix><vm id>:egress":
//   filter FCWARM-INPUT   -i <veth>: replies (ESTABLISHED,RELATED) accepted, everything else rejected — the
//   guest
//                         reaches no service of the host itself, on any of the host's addresses;
//   filter FCWARM-EGRESS  -o <veth>: replies accepted, the rest rejected (nobody else opens connections to
//   the
//                         guest; published ports are accepted before, in FCWARM-PORTS);
//                         -i <veth>: a source other than the guest's address rejected (no spoofing), replies
//                         accepted, `never` + AlwaysDeniedRanges() rejected, DNS to `dns_servers` accepted,
//                         `allow` (+ the policy's CIDRs) accepted, then for `all`: PrivateRanges() rejected
//                         and the rest accepted; finally everything else rejected;
//   nat    FCWARM-POSTROUTING  -s <guest>/32 ! -o <veth> MASQUERADE.
// ApplyEgress also turns net.ipv4.ip_forward on (and never off again: other VMs, Docker or the admin may rely
// on it). IPv4 only; fcwarm gives guests no IPv6 route.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "net/iptables.hpp"
#include "net/ipv4.hpp"

namespace fcwarm::net {

/// What a guest may reach beyond the host: `all` (the internet, not private ranges), `none`, or a CIDR list.
struct EgressPolicy {
  /// The three forms of the `--egress` option.
  enum class Mode { kAll, kNone, kList };
  Mode mode = Mode::kAll;   // Default: all
  std::vector<Cidr> cidrs;  // kList: the blocks allowed (deduplicated, in the order given)

  /// "all", "none" or "10.0.0.0/8,192.0.2.7/32".
  std::string ToString() const;
};

/// Parses "all" | "none" | "CIDR[,CIDR...]" (case-insensitive keywords; spaces around entries ignored; a bare
/// address means /32). InvalidArgument starting with `field` and naming the bad entry.
Result<EgressPolicy> ParseEgressPolicy(std::string_view text, std::string_view field = "egress");

/// Denied under every policy, even when inside an allowed CIDR: 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16
/// (link-local, cloud metadata), 224.0.0.0/3 (multicast, reserved, broadcast).
const std::vector<Cidr>& AlwaysDeniedRanges();
/// Denied by `all` unless listed in EgressRequest::allow: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
/// 100.64.0.0/10 (the host's LANs, other tenants' services).
const std::vector<Cidr>& PrivateRanges();

/// One VM's egress.
struct EgressRequest {
  std::string vm_id;                     // identifies the rules (1-64 of [A-Za-z0-9_.-])
  std::string host_veth;                 // host end of the VM's veth pair
  std::string guest_ip;                  // the guest's IPv4 address, e.g. "10.213.0.22"
  EgressPolicy policy;                   // Default: all
  std::vector<std::string> allow;        // CIDRs or addresses reachable under every policy (registry mirror)
  std::vector<std::string> dns_servers;  // IPv4 resolvers reachable on port 53 (udp, tcp) under every policy
  std::vector<std::string> never;        // CIDRs denied before `allow`: the guest address pool (other VMs)
};

/// The rules ApplyEgress adds (without their tag), for tests and `--dry-run`-style display. Validates every
/// field (InvalidArgument naming it).
Result<std::vector<NewRule>> BuildEgressRules(const EgressRequest& req, const IptablesOptions& opts);

/// Adds the VM's egress rules (replacing any it had: calling it again changes the policy atomically) and
/// turns IPv4 forwarding on. The handle deletes them; so do ReleaseEgress() and SweepRules() without one.
/// Thread safety: safe to call concurrently, also from several processes.
Result<std::unique_ptr<RuleHandle>> ApplyEgress(const EgressRequest& req, const IptablesOptions& opts = {});

/// Deletes the VM's egress rules (for a VM whose handle is gone, e.g. after a restart). Ok when none is left.
Status ReleaseEgress(const std::string& vm_id, const IptablesOptions& opts = {});

/// IPv4 `nameserver` entries of resolv.conf text that a guest can use: loopback resolvers (systemd-resolved's
/// 127.0.0.53, a local dnsmasq) are left out, because INPUT from a guest is closed.
std::vector<std::string> ResolversFromResolvConf(std::string_view text);

/// The host's resolvers for guests: ResolversFromResolvConf(/etc/resolv.conf), or when that names only
/// loopback resolvers, of /run/systemd/resolve/resolv.conf (systemd-resolved's upstream servers). Empty when
/// none: the caller then needs an explicit DNS server (`--dns`).
std::vector<std::string> HostResolvers();

}  // namespace fcwarm::net
