#include "net/ports.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>

#include "net/ipv4.hpp"

namespace fcwarm::net {

namespace {

constexpr size_t kMaxSpec = 64;

bool IsLoopback(const std::string& ip) {
  auto a = ParseIpv4(ip);
  return a && Cidr{0x7f000000u, 8}.Contains(*a);
}

// Serves 127.0.0.1 (a loopback address or every address).
bool ServesLoopback(const std::string& ip) { return ip == "0.0.0.0" || IsLoopback(ip); }


std::string HostPortText(const PortMapping& p) {
  return p.host_ip + ":" + std::to_string(p.host_port) + "/" + std::string(ProtocolName(p.protocol));
}

// Binds a socket to the mapping's address, port (0: any) and protocol and closes it. Returns the port bound,
// or the errno of socket()/bind() as a negative number.
int TryBind(const std::string& ip, uint16_t port, Protocol proto) {
  int fd = ::socket(AF_INET, (proto == Protocol::kTcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (proto == Protocol::kTcp) {
    // Like a server would: TIME_WAIT leftovers do not make a port busy, a listening socket does.
    int one = 1;
    (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  auto a = ParseIpv4(ip);
  sa.sin_addr.s_addr = htonl(a ? *a : 0);
  int result = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
    result = -errno;
  } else {
    socklen_t len = sizeof(sa);
    result = ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0 ? ntohs(sa.sin_port) : -errno;
  }
  ::close(fd);
  return result;
}

Status CheckOne(const PortMapping& p, const std::string& field, const std::vector<PortMapping>& published) {
  for (const auto& q : published) {
    if (PortsConflict(p, q)) {
      return Status::FailedPrecondition(field + ": host port " + HostPortText(p) +
                                        " is already published by fcwarm (as " + q.ToString() + ")");
    }
  }
  int r = TryBind(p.host_ip, p.host_port, p.protocol);
  if (r == -EADDRINUSE) {
    return Status::FailedPrecondition(field + ": host port " + HostPortText(p) + " is in use on this host");
  }
  if (r == -EADDRNOTAVAIL) {
    return Status::InvalidArgument(field + ": host address " + p.host_ip + " is not an address of this host");
  }
  if (r < 0) {
    return Status::Unavailable(field + ": cannot check host port " + HostPortText(p) + ": " +
                               std::strerror(-r));
  }
  return Status::Ok();
}

}  // namespace

Result<uint16_t> ParsePortNumber(std::string_view s, const std::string& what, const std::string& prefix) {
  if (s.find('-') != std::string_view::npos) {
    return Status::InvalidArgument(prefix + "port ranges are not supported (" + what + " '" + std::string(s) +
                                   "')");
  }
  if (s.empty()) return Status::InvalidArgument(prefix + what + " is empty");
  if (s.size() > 5 || s.find_first_not_of("0123456789") != std::string_view::npos) {
    return Status::InvalidArgument(prefix + what + " '" + std::string(s) + "' is not a number");
  }
  int v = std::stoi(std::string(s));
  if (v < 1 || v > 65535) {
    return Status::InvalidArgument(prefix + what + " " + std::to_string(v) + " is out of range (1-65535)");
  }
  return static_cast<uint16_t>(v);
}

std::string_view ProtocolName(Protocol p) { return p == Protocol::kTcp ? "tcp" : "udp"; }

std::string PortMapping::ToString() const {
  return host_ip + ":" + (host_port ? std::to_string(host_port) : "") + ":" + std::to_string(container_port) +
         "/" + std::string(ProtocolName(protocol));
}

Result<PortMapping> ParsePort(std::string_view spec, const std::string& default_host_ip,
                              std::string_view field) {
  std::string f(field);
  if (spec.size() > kMaxSpec) {
    return Status::InvalidArgument(f + ": '" + std::string(spec.substr(0, 32)) + "...' is too long (" +
                                   std::to_string(spec.size()) + " bytes; at most " +
                                   std::to_string(kMaxSpec) + ")");
  }
  const std::string prefix = f + ": '" + std::string(spec) + "': ";
  const std::string usage = " (expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp])";
  if (spec.empty()) return Status::InvalidArgument(f + ": empty port spec" + usage);
  for (char c : spec) {
    if (!std::isprint(static_cast<unsigned char>(c)) || c == ' ') {
      return Status::InvalidArgument(f + ": port spec has a space or control character" + usage);
    }
  }
  PortMapping m;
  std::string_view rest = spec;
  if (auto slash = rest.rfind('/'); slash != std::string_view::npos) {
    std::string proto(rest.substr(slash + 1));
    for (auto& c : proto) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (proto == "tcp") {
      m.protocol = Protocol::kTcp;
    } else if (proto == "udp") {
      m.protocol = Protocol::kUdp;
    } else {
      return Status::InvalidArgument(prefix + "protocol '" + proto + "' is not supported (tcp or udp)");
    }
    rest = rest.substr(0, slash);
  }
  if (rest.find('[') != std::string_view::npos || rest.find(']') != std::string_view::npos) {
    return Status::InvalidArgument(prefix + "IPv6 addresses are not supported (IPv4 only)");
  }
  std::vector<std::string_view> parts;
  while (true) {
    auto colon = rest.find(':');
    parts.push_back(rest.substr(0, colon));
    if (colon == std::string_view::npos) break;
    rest = rest.substr(colon + 1);
  }
  if (parts.size() > 3) {
    return Status::InvalidArgument(prefix + "too many ':' (IPv6 addresses are not supported)" + usage);
  }
  auto cp = ParsePortNumber(parts.back(), "container port", prefix);
  if (!cp.ok()) return cp.status();
  m.container_port = *cp;
  if (parts.size() >= 2 && !parts[parts.size() - 2].empty()) {
    auto hp = ParsePortNumber(parts[parts.size() - 2], "host port", prefix);
    if (!hp.ok()) return hp.status();
    m.host_port = *hp;
  }
  m.host_ip = parts.size() == 3 ? std::string(parts[0]) : default_host_ip;
  if (m.host_ip.empty()) return Status::InvalidArgument(prefix + "empty host address" + usage);
  if (!ParseIpv4(m.host_ip)) {
    return Status::InvalidArgument(prefix + "host address '" + m.host_ip + "' is not an IPv4 address");
  }
  return m;
}

Result<std::vector<PortMapping>> ParsePorts(const std::vector<std::string>& specs,
                                            const std::string& default_host_ip, std::string_view field) {
  std::vector<PortMapping> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    std::string f = std::string(field) + "[" + std::to_string(i) + "]";
    auto m = ParsePort(specs[i], default_host_ip, f);
    if (!m.ok()) return m.status();
    for (size_t j = 0; j < out.size(); ++j) {
      if (PortsConflict(*m, out[j])) {
        return Status::InvalidArgument(f + ": '" + specs[i] + "' takes host port " + HostPortText(*m) +
                                       ", as " + std::string(field) + "[" + std::to_string(j) + "] '" +
                                       specs[j] + "' does");
      }
    }
    out.push_back(*m);
  }
  return out;
}

bool PortsConflict(const PortMapping& a, const PortMapping& b) {
  if (a.host_port == 0 || b.host_port == 0) return false;
  return a.protocol == b.protocol && a.host_port == b.host_port &&
         (a.host_ip == b.host_ip || a.host_ip == "0.0.0.0" || b.host_ip == "0.0.0.0");
}

Status CheckPortsFree(const std::vector<PortMapping>& ports, const std::vector<PortMapping>& published) {
  for (size_t i = 0; i < ports.size(); ++i) {
    if (ports[i].host_port == 0) continue;
    std::string f = "ports[" + std::to_string(i) + "]: '" + ports[i].ToString() + "'";
    if (auto st = CheckOne(ports[i], f, published); !st.ok()) return st;
  }
  return Status::Ok();
}

Status AssignHostPorts(std::vector<PortMapping>* ports, const std::vector<PortMapping>& published) {
  for (size_t i = 0; i < ports->size(); ++i) {
    PortMapping& p = (*ports)[i];
    if (p.host_port != 0) continue;
    std::string f = "ports[" + std::to_string(i) + "]: '" + p.ToString() + "'";
    bool found = false;
    for (int attempt = 0; attempt < 32 && !found; ++attempt) {
      int r = TryBind(p.host_ip, 0, p.protocol);
      if (r == -EADDRNOTAVAIL) {
        return Status::InvalidArgument(f + ": host address " + p.host_ip + " is not an address of this host");
      }
      if (r <= 0) return Status::Unavailable(f + ": cannot pick a host port: " + std::strerror(-r));
      p.host_port = static_cast<uint16_t>(r);
      found = true;
      for (const auto* set : {&published, static_cast<const std::vector<PortMapping>*>(ports)}) {
        for (size_t j = 0; j < set->size() && found; ++j) {
          if (set == ports && j == i) continue;
          if (PortsConflict(p, (*set)[j])) found = false;
        }
      }
      if (!found) p.host_port = 0;
    }
    if (!found) return Status::Unavailable(f + ": found no free host port in 32 attempts");
  }
  return CheckPortsFree(*ports, published);
}

Result<std::vector<NewRule>> BuildPortRules(const PublishRequest& req, const IptablesOptions& opts) {
  if (auto st = ValidateVmId(req.vm_id); !st.ok()) return st;
  if (auto st = ValidateInterface(req.host_veth, "host_veth"); !st.ok()) return st;
  auto guest = ParseIpv4(req.guest_ip);
  if (!guest) return Status::InvalidArgument("guest_ip: '" + req.guest_ip + "' is not an IPv4 address");
  const std::string g = FormatIpv4(*guest);
  const std::string& v = req.host_veth;
  std::vector<NewRule> rules;
  std::set<std::pair<Protocol, uint16_t>> accepted;  // (protocol, container port) with FORWARD rules
  bool loopback = false;
  for (size_t i = 0; i < req.ports.size(); ++i) {
    const PortMapping& p = req.ports[i];
    std::string f = "ports[" + std::to_string(i) + "]";
    auto hip = ParseIpv4(p.host_ip);
    if (!hip) return Status::InvalidArgument(f + ": host address '" + p.host_ip + "' is not an IPv4 address");
    if (p.host_port == 0) {
      return Status::InvalidArgument(f + ": '" + p.ToString() +
                                     "' has no host port (AssignHostPorts picks one)");
    }
    if (p.container_port == 0)
      return Status::InvalidArgument(f + ": container port 0 is out of range (1-65535)");
    for (size_t j = 0; j < i; ++j) {
      if (PortsConflict(p, req.ports[j])) {
        return Status::InvalidArgument(f + ": '" + p.ToString() + "' takes the host port of ports[" +
                                       std::to_string(j) + "]");
      }
    }
    loopback = loopback || ServesLoopback(p.host_ip);
    const std::string proto(ProtocolName(p.protocol));
    std::vector<std::string> match;
    if (*hip != 0) match = {"-d", FormatIpv4(*hip) + "/32"};
    for (const auto& w : {std::string("-p"), proto, std::string("-m"), proto, std::string("--dport"),
                          std::to_string(p.host_port)}) {
      match.push_back(w);
    }
    rules.push_back({"nat",
                     ChainName(opts, "DNAT"),
                     match,
                     {"DNAT", "--to-destination", g + ":" + std::to_string(p.container_port)}});
    if (accepted.insert({p.protocol, p.container_port}).second) {
      const std::string cp = std::to_string(p.container_port);
      rules.push_back({"filter",
                       ChainName(opts, "PORTS"),
                       {"-o", v, "-d", g + "/32", "-p", proto, "-m", proto, "--dport", cp, "-m", "conntrack",
                        "--ctstate", "DNAT"},
                       {"ACCEPT"}});
      rules.push_back({"filter",
                       ChainName(opts, "PORTS"),
                       {"-i", v, "-s", g + "/32", "-p", proto, "-m", proto, "--sport", cp, "-m", "conntrack",
                        "--ctstate", "RELATED,ESTABLISHED"},
                       {"ACCEPT"}});
    }
  }
  if (loopback) {
    rules.push_back({"nat", ChainName(opts, "POSTROUTING"), {"-s", "127.0.0.0/8", "-o", v}, {"MASQUERADE"}});
    rules.push_back(
        {"filter",
         ChainName(opts, "INPUT"),
         {"-i", v, "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED"},
         {"DROP"}});
  }
  return rules;
}

Result<std::unique_ptr<RuleHandle>> PublishPorts(const PublishRequest& req, const IptablesOptions& opts) {
  auto rules = BuildPortRules(req, opts);
  if (!rules.ok()) return rules.status();
  bool loopback = false, outside = false;
  for (const auto& p : req.ports) {
    loopback = loopback || ServesLoopback(p.host_ip);
    outside = outside || !IsLoopback(p.host_ip);
  }
  std::vector<std::pair<std::string, std::string>> restore, undo;
  if (loopback) {
    const std::string key = "net/ipv4/conf/" + req.host_veth + "/route_localnet";
    auto old = SetSysctl(key, "1");
    if (!old.ok()) return old.status().WithContext("published ports of VM " + req.vm_id);
    // Back to the kernel's default when the VM's last publication goes (an earlier one may have set it).
    restore.emplace_back(key, "0");
    undo.emplace_back(key, *old);
  }
  std::string family = RuleTag(opts, req.vm_id, RuleKind::kPorts);
  auto tag = ReplaceTaggedRules(opts, family, *rules);
  if (!tag.ok()) {
    for (const auto& [key, value] : undo) (void)SetSysctl(key, value);
    return tag.status().WithContext("published ports of VM " + req.vm_id);
  }
  auto handle = std::make_unique<RuleHandle>(opts, family, *tag, std::move(restore));
  if (outside) {
    if (auto fwd = SetSysctl("net/ipv4/ip_forward", "1"); !fwd.ok()) {
      (void)handle->Release();
      return fwd.status().WithContext("published ports of VM " + req.vm_id);
    }
  }
  return handle;
}

Status UnpublishPorts(const std::string& vm_id, const IptablesOptions& opts) {
  if (auto st = ValidateVmId(vm_id); !st.ok()) return st;
  return DeleteTaggedRules(opts, RuleTag(opts, vm_id, RuleKind::kPorts));
}

}  // namespace fcwarm::net
