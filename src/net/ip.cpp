#include "net/ip.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/process.hpp"

namespace fcwarm::net {

namespace {

bool ValidIpv4(const std::string& s) {
  in_addr a{};
  return ::inet_pton(AF_INET, s.c_str(), &a) == 1;
}

}  // namespace

Status RunIp(const std::string& ip_binary, const std::vector<std::string>& args,
             std::chrono::milliseconds timeout) {
  std::vector<std::string> argv{ip_binary};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = util::Run(argv, timeout);
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  if (!r.ok()) return r.status().WithContext(cmd);
  if (r->exit_code != 0) {
    std::string out = r->output;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
    return Status::Unavailable("'" + cmd + "' failed (exit " + std::to_string(r->exit_code) +
                               "): " + out.substr(0, 400));
  }
  return Status::Ok();
}

Result<std::string> GatewayCidr(const std::string& gateway, const std::string& guest_ip_cidr) {
  if (gateway.empty() || guest_ip_cidr.empty()) return std::string();
  auto slash = guest_ip_cidr.find('/');
  if (slash == std::string::npos)
    return Status::InvalidArgument("ip_cidr '" + guest_ip_cidr + "' has no prefix");
  std::string ip = guest_ip_cidr.substr(0, slash);
  std::string prefix = guest_ip_cidr.substr(slash + 1);
  if (!ValidIpv4(ip))
    return Status::InvalidArgument("ip_cidr '" + guest_ip_cidr + "' is not an IPv4 address");
  if (prefix.empty() || prefix.size() > 2 || prefix.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(prefix) < 8 || std::stoi(prefix) > 30) {
    return Status::InvalidArgument("ip_cidr '" + guest_ip_cidr + "' needs a prefix length of 8-30");
  }
  if (!ValidIpv4(gateway)) return Status::InvalidArgument("gateway '" + gateway + "' is not an IPv4 address");
  return gateway + "/" + prefix;
}

bool InterfaceExists(const std::string& name) { return !name.empty() && ::if_nametoindex(name.c_str()) != 0; }

bool NetnsExists(const std::string& name) {
  struct stat st {};
  return !name.empty() && ::stat(("/run/netns/" + name).c_str(), &st) == 0;
}

bool InterfaceHasCarrier(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) return false;
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // ETHTOOL_GLINK reads the carrier itself; IFF_RUNNING would follow it only after the kernel's link watch
  // ran.
  ethtool_value link{};
  link.cmd = ETHTOOL_GLINK;
  ifreq req{};
  std::memcpy(req.ifr_name, name.c_str(), name.size());
  req.ifr_data = reinterpret_cast<char*>(&link);
  bool carrier = ::ioctl(fd, SIOCETHTOOL, &req) == 0 && link.data != 0;
  ::close(fd);
  return carrier;
}

Status DisableIpv6(const std::string& name) {
  // "all" and "default" are the directories of every interface and of new ones, not an interface.
  if (name.empty() || name.size() > 15 || name.find('/') != std::string::npos || name == "." || name == ".." ||
      name == "all" || name == "default") {
    return Status::InvalidArgument("interface name '" + name + "' is invalid");
  }
  struct stat st {};
  if (::stat("/proc/sys/net/ipv6", &st) != 0) return Status::Ok();  // no IPv6 on this host at all
  const std::string path = "/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6";
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::Unavailable("disable IPv6 on " + name + ": open " + path + ": " + std::strerror(errno));
  ssize_t n = ::write(fd, "1", 1);
  int err = errno;
  ::close(fd);
  if (n != 1) return Status::Unavailable("disable IPv6 on " + name + ": write " + path + ": " + std::strerror(err));
  return Status::Ok();
}

Result<bool> DeleteInterfaceIfPresent(const std::string& ip_binary, const std::string& name,
                                      std::chrono::milliseconds timeout) {
  if (!InterfaceExists(name)) return false;
  auto st = RunIp(ip_binary, {"link", "del", "dev", name}, timeout);
  if (!st.ok()) {
    if (!InterfaceExists(name)) return false;  // gone meanwhile (e.g. with its namespace)
    return st;
  }
  return true;
}

Result<bool> DeleteNetnsIfPresent(const std::string& ip_binary, const std::string& name,
                                  std::chrono::milliseconds timeout) {
  if (!NetnsExists(name)) return false;
  auto st = RunIp(ip_binary, {"netns", "del", name}, timeout);
  if (!st.ok()) {
    if (!NetnsExists(name)) return false;
    return st;
  }
  return true;
}

}  // namespace fcwarm::net
