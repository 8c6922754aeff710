#include "net/tap.hpp"

#include "net/ip.hpp"

namespace fcwarm::net {

Status TapNetwork::Ip(const std::vector<std::string>& args, bool in_netns) {
  std::vector<std::string> argv;
  if (in_netns && !plan_.netns.empty()) argv = {"-n", plan_.netns};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunIp(plan_.ip_binary, argv, plan_.timeout);
}

Status TapNetwork::Create() {
  if (plan_.tap.empty() || plan_.tap.size() > 15) {
    return Status::InvalidArgument("TAP name '" + plan_.tap + "' must have 1-15 characters");
  }
  Status st;
  if (!plan_.netns.empty()) {
    // A namespace left behind by a crashed run is removed first (names are unique among live VMs).
    (void)Ip({"netns", "del", plan_.netns}, false);
    st = Ip({"netns", "add", plan_.netns}, false);
    if (!st.ok()) return st.WithContext("create network namespace");
    created_ns_ = true;
    st = Ip({"link", "set", "dev", "lo", "up"}, true);
  } else if (InterfaceExists(plan_.tap)) {
    (void)Ip({"link", "del", "dev", plan_.tap}, false);
  }
  if (st.ok()) {
    st = Ip({"tuntap", "add", "dev", plan_.tap, "mode", "tap"}, true);
    if (st.ok()) created_tap_ = true;
  }
  if (st.ok() && !plan_.gateway_cidr.empty())
    st = Ip({"addr", "add", plan_.gateway_cidr, "dev", plan_.tap}, true);
  // A TAP in the root namespace: IPv4 only, like a QEMU VM's veth (net::DisableIpv6).
  if (st.ok() && plan_.netns.empty()) st = DisableIpv6(plan_.tap);
  if (st.ok()) st = Ip({"link", "set", "dev", plan_.tap, "up"}, true);
  if (!st.ok()) {
    (void)Release();
    return st.WithContext("create TAP " + plan_.tap);
  }
  return Status::Ok();
}

Status TapNetwork::Adopt() {
  if (!plan_.netns.empty()) {
    if (!NetnsExists(plan_.netns)) return Status::FailedPrecondition("network namespace " + plan_.netns + " is gone");
    created_ns_ = true;
  } else if (!InterfaceExists(plan_.tap)) {
    return Status::FailedPrecondition("TAP " + plan_.tap + " is gone");
  }
  created_tap_ = true;
  return Status::Ok();
}

Status TapNetwork::Release() {
  Status result;
  if (created_ns_) {
    result = Ip({"netns", "del", plan_.netns}, false);
    if (result.ok()) created_ns_ = created_tap_ = false;
  } else if (created_tap_) {
    result = Ip({"link", "del", "dev", plan_.tap}, false);
    if (result.ok() || !InterfaceExists(plan_.tap)) {
      created_tap_ = false;
      result = Status::Ok();
    }
  }
  return result;
}

}  // namespace fcwarm::net
