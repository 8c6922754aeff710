// Private: per-VM network namespace with a TAP for the VMM, bridged to a veth pair whose host end is the
// guest's gateway (the QEMU backend's networking, docs/qemu-backend.md, "Networking"). Firecracker's TAP is
// tap.hpp; what both share (running `ip`, the gateway address, interface questions) is ip.hpp.
//
//   root namespace                 | namespace <netns>
//   <host_veth> gateway/prefix  <--+--> veth0 --+
//   (route to the guest's block)   |            br0 -- tap0 <-- VMM (-netdev tap,ifname=tap0)
//                                  |
// The guest is on the same L2 segment as the host end of the veth pair, so its /30 is a connected route on
// the host and the guest's default gateway is the host. Nothing is forwarded or NATed.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "net/ip.hpp"

namespace fcwarm::net {

/// What to create for one VM.
struct NetnsPlan {
  std::string ip_binary = "ip";  // iproute2
  std::string netns;             // namespace name (≤ 15 characters; it is also a file in /run/netns)
  std::string tap = "tap0";      // TAP device inside the namespace
  std::string host_veth;         // host end of the veth pair (≤ 15 characters); empty: no host link
  std::string gateway_cidr;      // address of host_veth, "a.b.c.d/n"; empty: no address
  std::chrono::milliseconds timeout{10000};  // per `ip` invocation
};

/// Derives unique names for a VM: "<netns_prefix><10 hex>" and "<veth_prefix><10 hex>" from a digest of the
/// VM id. Fails when a name would exceed 15 characters.
Status NamesForVm(const std::string& vm_id, const std::string& netns_prefix, const std::string& veth_prefix,
                  NetnsPlan* plan);

/// Owns the namespace and devices of one VM. Release() is idempotent; the destructor calls it.
/// (TapNetwork in tap.hpp has the same owner shape on purpose: a plan, Create, idempotent Release. What they
/// create differs, and each backend depends on its layout, so they are two classes.)
/// Thread safety: not thread-safe; owned by one VM object that serializes access.
class NetnsNetwork {
 public:
  explicit NetnsNetwork(NetnsPlan plan) : plan_(std::move(plan)) {}
  ~NetnsNetwork() { (void)Release(); }
  NetnsNetwork(const NetnsNetwork&) = delete;
  NetnsNetwork& operator=(const NetnsNetwork&) = delete;

  /// Creates everything in the plan; on error removes what it created and returns the `ip` output.
  Status Create();
  /// Deletes the host veth (both ends) and the namespace (with tap0 and br0). Ok when nothing was left.
  Status Release();
  /// Takes over what an earlier process created for this plan (live restore): FailedPrecondition when the
  /// namespace or the host veth is missing. Release() then deletes them.
  Status Adopt();
  /// Lets go of the devices without deleting them (the VM keeps running for a later process to adopt).
  void Forget() { created_ns_ = created_veth_ = false; }
  const NetnsPlan& plan() const { return plan_; }

 private:
  Status Ip(const std::vector<std::string>& args);
  // Runs `commands` with one `ip [-n netns] -batch`.
  Status Batch(const std::vector<std::vector<std::string>>& commands, const std::string& netns);
  NetnsPlan plan_;
  bool created_ns_ = false;
  bool created_veth_ = false;
};

}  // namespace fcwarm::net
