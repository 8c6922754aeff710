#include "net/ipv4.hpp"

namespace fcwarm::net {

namespace {

uint32_t Mask(int prefix) { return prefix == 0 ? 0u : ~uint32_t{0} << (32 - prefix); }

}  // namespace

std::optional<uint32_t> ParseIpv4(std::string_view text) {
  uint32_t out = 0;
  int parts = 0;
  size_t i = 0;
  while (parts < 4) {
    size_t start = i;
    uint32_t v = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9' && i - start < 3) {
      v = v * 10 + static_cast<uint32_t>(text[i] - '0');
      ++i;
    }
    if (i == start || v > 255) return std::nullopt;
    if (i - start > 1 && text[start] == '0') return std::nullopt;  // "010" is octal to inet_aton: refuse
    out = (out << 8) | v;
    ++parts;
    if (parts < 4) {
      if (i >= text.size() || text[i] != '.') return std::nullopt;
      ++i;
    }
  }
  if (i != text.size()) return std::nullopt;
  return out;
}

std::string FormatIpv4(uint32_t a) {
  return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
         std::to_string((a >> 8) & 255) + "." + std::to_string(a & 255);
}

std::string Cidr::ToString() const { return FormatIpv4(addr) + "/" + std::to_string(prefix); }

bool Cidr::Contains(uint32_t ip) const { return (ip & Mask(prefix)) == addr; }

bool Cidr::Overlaps(const Cidr& other) const {
  int p = prefix < other.prefix ? prefix : other.prefix;
  return (addr & Mask(p)) == (other.addr & Mask(p));
}

Result<Cidr> ParseCidr(std::string_view text, std::string_view field) {
  std::string f(field);
  std::string shown(text.substr(0, 64));
  auto slash = text.find('/');
  auto ip = ParseIpv4(text.substr(0, slash));
  if (!ip) {
    return Status::InvalidArgument(f + ": '" + shown +
                                   "' is not an IPv4 address or CIDR block (a.b.c.d or a.b.c.d/n)");
  }
  int prefix = 32;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 2 || p.find_first_not_of("0123456789") != std::string_view::npos ||
        (p.size() == 2 && p[0] == '0') || std::stoi(std::string(p)) > 32) {
      return Status::InvalidArgument(f + ": '" + shown + "' has an invalid prefix length (0-32)");
    }
    prefix = std::stoi(std::string(p));
  }
  if ((*ip & ~Mask(prefix)) != 0) {
    return Status::InvalidArgument(f + ": '" + shown + "' has host bits set (did you mean " +
                                   Cidr{*ip & Mask(prefix), prefix}.ToString() + "?)");
  }
  return Cidr{*ip, prefix};
}

Result<Cidr> AddressPoolCidr(const std::string& base, int64_t blocks) {
  auto b = ParseIpv4(base);
  if (!b) return Status::InvalidArgument("address_pool_base: '" + base + "' is not an IPv4 address");
  if (blocks < 1 || blocks > (int64_t{1} << 30)) {
    return Status::InvalidArgument("address_pool_size: " + std::to_string(blocks) + " is out of range");
  }
  uint64_t first = *b;
  uint64_t last = first + static_cast<uint64_t>(blocks) * 4 - 1;
  if (last > 0xffffffffull) return Status::InvalidArgument("address pool runs past 255.255.255.255");
  int prefix = 32;
  while (prefix > 0 && (first & Mask(prefix)) != (last & Mask(prefix))) --prefix;
  return Cidr{static_cast<uint32_t>(first) & Mask(prefix), prefix};
}

}  // namespace fcwarm::net
