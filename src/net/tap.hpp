// Private: a VM's TAP device with the gateway address on it, in the root namespace or in a namespace of its own
// (the Firecracker backend's networking, docs/firecracker.md). QEMU's namespace + bridge + veth layout is
// netns.hpp.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::net {

/// What to create for one VM.
struct TapPlan {
  std::string ip_binary = "ip";  // iproute2
  std::string tap;               // TAP device name (≤ 15 characters)
  std::string netns;             // network namespace name; empty: the TAP lives in the root namespace
  std::string gateway_cidr;      // host-side address of the link, "a.b.c.d/n" (GatewayCidr); empty: no address
  std::chrono::milliseconds timeout{10000};  // per `ip` invocation
};

/// Owns the TAP (and namespace) of one VM. Release() is idempotent; the destructor calls it. (Same owner shape
/// as NetnsNetwork on purpose; see there.)
/// Thread safety: not thread-safe; owned by one VM object that serializes access.
class TapNetwork {
 public:
  explicit TapNetwork(TapPlan plan) : plan_(std::move(plan)) {}
  ~TapNetwork() { (void)Release(); }
  TapNetwork(const TapNetwork&) = delete;
  TapNetwork& operator=(const TapNetwork&) = delete;

  /// Creates the namespace (if any) and the TAP, assigns the gateway address and brings it up. A TAP or
  /// namespace of the same name left by a crashed run is removed first. On error everything created so far is
  /// removed; InvalidArgument when the TAP name is empty or longer than 15 characters.
  Status Create();
  /// Deletes the TAP (or the whole namespace). Ok when there was nothing to delete.
  Status Release();
  /// Takes over what an earlier process created for this plan (live restore): FailedPrecondition when the
  /// namespace or the TAP is missing. Release() then deletes them.
  Status Adopt();
  /// Lets go of the devices without deleting them (the VM keeps running for a later process to adopt).
  void Forget() { created_ns_ = created_tap_ = false; }
  const TapPlan& plan() const { return plan_; }

 private:
  Status Ip(const std::vector<std::string>& args, bool in_netns);
  TapPlan plan_;
  bool created_tap_ = false;
  bool created_ns_ = false;
};

}  // namespace fcwarm::net
