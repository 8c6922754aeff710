// Private: per-VM host networking for Firecracker (a TAP in the root namespace, or in a private namespace).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::firecracker {

/// What to create for one VM.
struct NetPlan {
  std::string tap;           // TAP device name (≤ 15 characters)
  std::string netns;         // network namespace name; empty: the TAP lives in the root namespace
  std::string gateway_cidr;  // host-side address of the link, "a.b.c.d/n"; empty: no address
};

/// Owns the TAP (and namespace) of one VM. Release() is idempotent; the destructor calls it.
/// Thread safety: not thread-safe; owned by one VM object that serializes access.
class HostNet {
 public:
  HostNet(std::string ip_binary, NetPlan plan) : ip_(std::move(ip_binary)), plan_(std::move(plan)) {}
  ~HostNet() { (void)Release(); }
  HostNet(const HostNet&) = delete;
  HostNet& operator=(const HostNet&) = delete;

  /// Creates the namespace (if any) and the TAP, assigns the gateway address and brings it up.
  /// On error everything created so far is removed.
  Status Create();
  /// Deletes the TAP (or the whole namespace). Ok when there was nothing to delete.
  Status Release();
  const NetPlan& plan() const { return plan_; }

 private:
  Status Ip(const std::vector<std::string>& args, bool in_netns);
  std::string ip_;
  NetPlan plan_;
  bool created_tap_ = false;
  bool created_ns_ = false;
};

/// "10.0.0.2/30" → "/30" suffix applied to `gateway`; empty when either is empty or malformed.
std::string GatewayCidr(const std::string& gateway, const std::string& guest_ip_cidr);

/// True when a network interface with this name exists in the caller's namespace.
bool InterfaceExists(const std::string& name);

}  // namespace fcwarm::firecracker
