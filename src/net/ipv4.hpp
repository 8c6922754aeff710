// Private: IPv4 addresses and CIDR blocks for the host networking code (egress policy, published ports).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "fcwarm/status.hpp"

namespace fcwarm::net {

/// "a.b.c.d" in dotted-quad form (exactly four decimal parts, no leading '+', no spaces) → host-order value.
std::optional<uint32_t> ParseIpv4(std::string_view text);
/// Host-order value → "a.b.c.d".
std::string FormatIpv4(uint32_t addr);

/// An IPv4 block "a.b.c.d/n". `addr` has no bits set outside the prefix.
struct Cidr {
  uint32_t addr = 0;  // host order, masked
  int prefix = 32;    // 0-32

  /// "a.b.c.d/n" (always with the prefix, also for /32).
  std::string ToString() const;
  /// True when `ip` (host order) is inside the block.
  bool Contains(uint32_t ip) const;
  /// True when the two blocks share at least one address.
  bool Overlaps(const Cidr& other) const;
  bool operator==(const Cidr& o) const { return addr == o.addr && prefix == o.prefix; }
};

/// Parses "a.b.c.d/n" or a bare address (= /32). Host bits set ("10.0.0.1/8") are refused, so that a typo
/// does not silently widen or narrow a rule. Errors are InvalidArgument and start with `field`.
Result<Cidr> ParseCidr(std::string_view text, std::string_view field);

/// The smallest block that holds the guest address pool: `blocks` /30 blocks from `base` (as in
/// CoreOptions::address_pool_base/address_pool_size). "10.213.0.0" × 16384 → "10.213.0.0/16".
Result<Cidr> AddressPoolCidr(const std::string& base, int64_t blocks);

}  // namespace fcwarm::net
