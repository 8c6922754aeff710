#include "net/egress.hpp"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "util/common.hpp"

namespace fcwarm::net {

namespace {

std::string_view TrimView(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

const std::vector<std::string> kReject = {"REJECT", "--reject-with", "icmp-admin-prohibited"};

}  // namespace

std::string EgressPolicy::ToString() const {
  if (mode == Mode::kAll) return "all";
  if (mode == Mode::kNone) return "none";
  std::string out;
  for (const auto& c : cidrs) out += (out.empty() ? "" : ",") + c.ToString();
  return out;
}

Result<EgressPolicy> ParseEgressPolicy(std::string_view text, std::string_view field) {
  std::string f(field);
  const std::string usage = " (expected all, none or CIDR[,CIDR...])";
  if (text.size() > 4096)
    return Status::InvalidArgument(f + ": too long (" + std::to_string(text.size()) + " bytes)");
  std::string_view t = TrimView(text);
  if (t.empty()) return Status::InvalidArgument(f + ": empty" + usage);
  EgressPolicy p;
  std::string lower = Lower(t);
  if (lower == "all") return p;
  if (lower == "none") {
    p.mode = EgressPolicy::Mode::kNone;
    return p;
  }
  p.mode = EgressPolicy::Mode::kList;
  size_t index = 0;
  while (true) {
    auto comma = t.find(',');
    std::string_view entry = TrimView(t.substr(0, comma));
    std::string ef = f + " entry " + std::to_string(index + 1);
    if (entry.empty()) return Status::InvalidArgument(ef + ": empty" + usage);
    std::string el = Lower(entry);
    if (el == "all" || el == "none") {
      return Status::InvalidArgument(ef + ": '" + el + "' cannot be combined with other entries" + usage);
    }
    auto c = ParseCidr(entry, ef);
    if (!c.ok()) return Status::InvalidArgument(c.status().message() + usage);
    if (std::find(p.cidrs.begin(), p.cidrs.end(), *c) == p.cidrs.end()) p.cidrs.push_back(*c);
    ++index;
    if (comma == std::string_view::npos) break;
    t = t.substr(comma + 1);
  }
  return p;
}

const std::vector<Cidr>& AlwaysDeniedRanges() {
  static const std::vector<Cidr> kRanges = {
      {0x00000000u, 8}, {0x7f000000u, 8}, {0xa9fe0000u, 16}, {0xe0000000u, 3}};
  return kRanges;
}

const std::vector<Cidr>& PrivateRanges() {
  static const std::vector<Cidr> kRanges = {
      {0x0a000000u, 8}, {0xac100000u, 12}, {0xc0a80000u, 16}, {0x64400000u, 10}};
  return kRanges;
}

Result<std::vector<NewRule>> BuildEgressRules(const EgressRequest& req, const IptablesOptions& opts) {
  if (auto st = ValidateVmId(req.vm_id); !st.ok()) return st;
  if (auto st = ValidateInterface(req.host_veth, "host_veth"); !st.ok()) return st;
  auto guest = ParseIpv4(req.guest_ip);
  if (!guest) return Status::InvalidArgument("guest_ip: '" + req.guest_ip + "' is not an IPv4 address");
  std::vector<Cidr> never, allow;
  for (size_t i = 0; i < req.never.size(); ++i) {
    auto c = ParseCidr(req.never[i], "never[" + std::to_string(i) + "]");
    if (!c.ok()) return c.status();
    never.push_back(*c);
  }
  for (const auto& c : AlwaysDeniedRanges()) never.push_back(c);
  for (size_t i = 0; i < req.allow.size(); ++i) {
    auto c = ParseCidr(req.allow[i], "allow[" + std::to_string(i) + "]");
    if (!c.ok()) return c.status();
    allow.push_back(*c);
  }
  if (req.policy.mode == EgressPolicy::Mode::kList) {
    for (const auto& c : req.policy.cidrs) allow.push_back(c);
  }
  std::vector<uint32_t> dns;
  for (size_t i = 0; i < req.dns_servers.size(); ++i) {
    auto a = ParseIpv4(req.dns_servers[i]);
    std::string f = "dns_servers[" + std::to_string(i) + "]";
    if (!a) return Status::InvalidArgument(f + ": '" + req.dns_servers[i] + "' is not an IPv4 address");
    for (const auto& n : never) {
      if (n.Contains(*a)) {
        return Status::InvalidArgument(f + ": " + req.dns_servers[i] + " is in " + n.ToString() +
                                       ", which a guest can never reach (use another resolver)");
      }
    }
    dns.push_back(*a);
  }

  const std::string& v = req.host_veth;
  const std::string g = FormatIpv4(*guest) + "/32";
  const std::string in = ChainName(opts, "INPUT"), eg = ChainName(opts, "EGRESS");
  const std::vector<std::string> replies = {"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  std::vector<NewRule> rules;
  // The host itself: replies to connections the host opened, nothing else.
  rules.push_back({"filter", in, with({"-i", v}, replies), {"ACCEPT"}});
  rules.push_back({"filter", in, {"-i", v}, kReject});
  // Towards the guest: replies only (published ports are accepted earlier, in FCWARM-PORTS).
  rules.push_back({"filter", eg, with({"-o", v}, replies), {"ACCEPT"}});
  rules.push_back({"filter", eg, {"-o", v}, kReject});
  // From the guest.
  rules.push_back({"filter", eg, {"-i", v, "!", "-s", g}, kReject});
  rules.push_back({"filter", eg, with({"-i", v}, replies), {"ACCEPT"}});
  for (const auto& n : never) rules.push_back({"filter", eg, {"-i", v, "-d", n.ToString()}, kReject});
  for (uint32_t d : dns) {
    for (const char* proto : {"udp", "tcp"}) {
      rules.push_back({"filter",
                       eg,
                       {"-i", v, "-d", FormatIpv4(d) + "/32", "-p", proto, "-m", proto, "--dport", "53"},
                       {"ACCEPT"}});
    }
  }
  for (const auto& a : allow) rules.push_back({"filter", eg, {"-i", v, "-d", a.ToString()}, {"ACCEPT"}});
  if (req.policy.mode == EgressPolicy::Mode::kAll) {
    for (const auto& p : PrivateRanges())
      rules.push_back({"filter", eg, {"-i", v, "-d", p.ToString()}, kReject});
    rules.push_back({"filter", eg, {"-i", v}, {"ACCEPT"}});
  }
  rules.push_back({"filter", eg, {"-i", v}, kReject});
  // Leaving through any other interface: the guest's address is replaced by the host's.
  rules.push_back({"nat", ChainName(opts, "POSTROUTING"), {"-s", g, "!", "-o", v}, {"MASQUERADE"}});
  return rules;
}

Result<std::unique_ptr<RuleHandle>> ApplyEgress(const EgressRequest& req, const IptablesOptions& opts) {
  auto rules = BuildEgressRules(req, opts);
  if (!rules.ok()) return rules.status();
  std::string family = RuleTag(opts, req.vm_id, RuleKind::kEgress);
  auto tag = ReplaceTaggedRules(opts, family, *rules);
  if (!tag.ok()) return tag.status().WithContext("egress rules of VM " + req.vm_id);
  auto handle =
      std::make_unique<RuleHandle>(opts, family, *tag, std::vector<std::pair<std::string, std::string>>{});
  // Forwarding only after the policy is in place, so that there is no moment the guest is forwarded
  // unfiltered.
  if (auto fwd = SetSysctl("net/ipv4/ip_forward", "1"); !fwd.ok()) {
    (void)handle->Release();
    return fwd.status().WithContext("egress of VM " + req.vm_id);
  }
  return handle;
}

Status ReleaseEgress(const std::string& vm_id, const IptablesOptions& opts) {
  if (auto st = ValidateVmId(vm_id); !st.ok()) return st;
  return DeleteTaggedRules(opts, RuleTag(opts, vm_id, RuleKind::kEgress));
}

std::vector<std::string> ResolversFromResolvConf(std::string_view text) {
  std::vector<std::string> out;
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    if (!(words >> key >> value) || key != "nameserver") continue;
    auto a = ParseIpv4(value);
    if (!a || Cidr{0x7f000000u, 8}.Contains(*a) || *a == 0) continue;
    if (std::find(out.begin(), out.end(), value) == out.end()) out.push_back(value);
  }
  return out;
}

std::vector<std::string> HostResolvers() {
  for (const char* path : {"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"}) {
    auto text = util::ReadFile(path, 1 << 16);
    if (!text.ok()) continue;
    auto out = ResolversFromResolvConf(*text);
    if (!out.empty()) return out;
  }
  return {};
}

}  // namespace fcwarm::net
