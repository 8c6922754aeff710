#include "net/netns.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>

#include "util/common.hpp"

namespace fcwarm::net {

Status NamesForVm(const std::string& vm_id, const std::string& netns_prefix, const std::string& veth_prefix,
                  NetnsPlan* plan) {
  std::string digest = util::Xxh3Hex(vm_id).substr(0, 10);
  plan->netns = netns_prefix + digest;
  plan->host_veth = veth_prefix + digest;
  static const std::regex kName("^[A-Za-z0-9_.-]{1,15}$");
  if (!std::regex_match(plan->netns, kName)) {
    return Status::InvalidArgument("network namespace name '" + plan->netns +
                                   "' is invalid (letters, digits, '_', '.', '-'; at most 15 characters)");
  }
  if (!std::regex_match(plan->host_veth, kName)) {
    return Status::InvalidArgument("veth name '" + plan->host_veth +
                                   "' is invalid (letters, digits, '_', '.', '-'; at most 15 characters)");
  }
  return Status::Ok();
}

Status NetnsNetwork::Ip(const std::vector<std::string>& args) {
  return RunIp(plan_.ip_binary, args, plan_.timeout);
}

Status NetnsNetwork::Batch(const std::vector<std::vector<std::string>>& commands, const std::string& netns) {
  // One `ip -batch` per namespace instead of one process per command (each `ip` costs a few ms). The batch
  // lives in a sealed-off memfd that the child opens through /proc/<our pid>/fd (it is not inherited).
  std::string text;
  for (const auto& c : commands) {
    for (const auto& word : c) {
      if (word.empty() || word.find_first_of(" \t\n\"'\\#") != std::string::npos) {
        return Status::InvalidArgument("unsafe word '" + word + "' in a network command");
      }
      text += word + " ";
    }
    text.back() = '\n';
  }
  auto memfd = util::MemfdWithText("fcwarm-ip-batch", text);
  if (!memfd.ok()) return memfd.status();
  int fd = *memfd;
  std::vector<std::string> args;
  if (!netns.empty()) args = {"-n", netns};
  args.push_back("-batch");
  args.push_back("/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd));
  Status st = Ip(args);
  ::close(fd);
  if (!st.ok()) return Status(st.code(), st.message() + " [batch: " + text.substr(0, 600) + "]");
  return st;
}

Status NetnsNetwork::Create() {
  if (plan_.netns.empty()) return Status::InvalidArgument("network plan without a namespace name");
  if (!plan_.gateway_cidr.empty() && plan_.host_veth.empty()) {
    return Status::InvalidArgument("a gateway address needs a host veth");
  }
  if (NetnsExists(plan_.netns)) {
    return Status::AlreadyExists("network namespace " + plan_.netns + " exists already (a leaked VM?)");
  }
  if (!plan_.host_veth.empty() && InterfaceExists(plan_.host_veth)) {
    return Status::AlreadyExists("network interface " + plan_.host_veth + " exists already (a leaked VM?)");
  }
  auto fail = [&](Status st) {
    (void)Release();
    return st.WithContext("network for namespace " + plan_.netns);
  };
  if (auto st = Ip({"netns", "add", plan_.netns}); !st.ok()) return fail(st);
  created_ns_ = true;
  const std::string& ns = plan_.netns;
  if (!plan_.host_veth.empty()) {
    std::vector<std::vector<std::string>> host = {
        {"link", "add", plan_.host_veth, "type", "veth", "peer", "name", "veth0", "netns", ns}};
    if (!plan_.gateway_cidr.empty())
      host.push_back({"addr", "add", plan_.gateway_cidr, "dev", plan_.host_veth});
    created_veth_ = true;
    if (auto st = Batch(host, ""); !st.ok()) return fail(st);
    // IPv4 only: before the link is up, so the host end never has an IPv6 address the guest could reach.
    if (auto st = DisableIpv6(plan_.host_veth); !st.ok()) return fail(st);
    if (auto st = Ip({"link", "set", plan_.host_veth, "up"}); !st.ok()) return fail(st);
  }
  std::vector<std::vector<std::string>> inside = {
      {"link", "set", "lo", "up"},
      {"tuntap", "add", "dev", plan_.tap, "mode", "tap"},
      {"link", "add", "br0", "type", "bridge", "forward_delay", "0"},
      {"link", "set", plan_.tap, "master", "br0"},
      {"link", "set", plan_.tap, "up"},
  };
  if (!plan_.host_veth.empty()) {
    inside.push_back({"link", "set", "veth0", "master", "br0"});
    inside.push_back({"link", "set", "veth0", "up"});
  }
  inside.push_back({"link", "set", "br0", "up"});
  if (auto st = Batch(inside, ns); !st.ok()) return fail(st);
  return Status::Ok();
}

Status NetnsNetwork::Adopt() {
  if (!NetnsExists(plan_.netns)) return Status::FailedPrecondition("network namespace " + plan_.netns + " is gone");
  created_ns_ = true;
  if (!plan_.host_veth.empty()) {
    if (!InterfaceExists(plan_.host_veth)) return Status::FailedPrecondition("veth " + plan_.host_veth + " is gone");
    created_veth_ = true;
  }
  return Status::Ok();
}

Status NetnsNetwork::Release() {
  Status result;
  if (created_veth_) {
    if (InterfaceExists(plan_.host_veth)) {
      if (auto st = Ip({"link", "del", plan_.host_veth}); !st.ok() && InterfaceExists(plan_.host_veth)) {
        result = st;
      }
    }
    created_veth_ = false;
  }
  if (created_ns_) {
    if (NetnsExists(plan_.netns)) {
      if (auto st = Ip({"netns", "del", plan_.netns}); !st.ok() && NetnsExists(plan_.netns) && result.ok()) {
        result = st;
      }
    }
    created_ns_ = false;
  }
  return result;
}

}  // namespace fcwarm::net
