// Private: the fcwarm-owned iptables chains and per-VM tagged rules (docs/networking.md).
//
// Every rule fcwarm adds for a VM carries the comment `<tag_prefix><vm id>:<kind>:<nonce>` (e.g.
// "fcwarm:vm:ab12:ports:3f9c0a1e"), lives in one of the fcwarm chains below, and is added or removed in one
// `iptables-restore --noflush` transaction per call (all of a VM's rules appear and disappear together). The
// nonce is new at every apply, so a handle from an earlier apply never deletes the rules that replaced its
// own. The chains are created on first use and stay (RemoveBaseChains() removes them when no tagged rule is
// left):
//
//   filter INPUT       -j FCWARM-INPUT                        (inserted first)  host services, per VM
//   filter FORWARD     -j FCWARM-FORWARD                      (inserted first)
//          FCWARM-FORWARD: -j FCWARM-PORTS, then -j FCWARM-EGRESS             published ports before the
//          policy
//   nat    PREROUTING  -m addrtype --dst-type LOCAL -j FCWARM-DNAT   (inserted first)
//   nat    OUTPUT      -m addrtype --dst-type LOCAL -j FCWARM-DNAT   (inserted first)
//   nat    POSTROUTING -j FCWARM-POSTROUTING                  (inserted first)  MASQUERADE
//
// Several processes may call these functions at once: each transaction holds an flock on `lock_path` (and
// iptables' own lock through -w), reads the rule set, and re-reads and retries once when iptables-restore
// refuses the batch because another tool changed the rule set in between.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm::net {

/// Where the iptables programs are and how fcwarm names its chains and tags.
struct IptablesOptions {
  std::string iptables_save = "iptables-save";        // Default: found in PATH
  std::string iptables_restore = "iptables-restore";  // Default: found in PATH
  std::string chain_prefix = "FCWARM";                // Default: chains FCWARM-INPUT, FCWARM-FORWARD, ...
  std::string tag_prefix = "fcwarm:vm:";              // Default: comments "fcwarm:vm:<vm id>:<kind>:<nonce>"
  std::string lock_path = "/run/lock/fcwarm-iptables.lock";  // Default: serializes fcwarm processes
  std::chrono::milliseconds timeout{20000};                  // Default: 20 s per iptables program run
};

/// What a per-VM rule belongs to; the part of its tag after the VM id.
enum class RuleKind { kEgress, kPorts };

/// The family of a VM's rules of one kind: "<tag_prefix><vm id>:egress" or ":ports". A tag is the family plus
/// ":<nonce>"; "tagged `family`" below means the comment is the family itself or starts with "<family>:".
std::string RuleTag(const IptablesOptions& opts, const std::string& vm_id, RuleKind kind);

/// "<chain_prefix>-<suffix>", e.g. ChainName(opts, "FORWARD") == "FCWARM-FORWARD".
std::string ChainName(const IptablesOptions& opts, const std::string& suffix);

/// Checks a VM id for use in a tag: 1-64 of [A-Za-z0-9_.-]. InvalidArgument naming `vm_id` otherwise.
Status ValidateVmId(const std::string& vm_id);
/// Checks an interface name: 1-15 of [A-Za-z0-9_.-]. InvalidArgument naming `field` otherwise.
Status ValidateInterface(const std::string& name, const std::string& field);

/// One rule fcwarm adds: `-A <chain> <match...> -m comment --comment <tag> -j <target...>` in `table`.
struct NewRule {
  std::string table;                // "filter" or "nat"
  std::string chain;                // a chain named by ChainName()
  std::vector<std::string> match;   // e.g. {"-i", "fcwh01", "-p", "tcp", "--dport", "80"}
  std::vector<std::string> target;  // e.g. {"REJECT", "--reject-with", "icmp-admin-prohibited"}
};

/// One rule as listed by iptables-save (with counters).
struct RuleLine {
  std::string table;     // "filter" or "nat"
  std::string chain;     // chain name
  std::string spec;      // the rule as iptables-save prints it, without "-A <chain> " and counters
  std::string comment;   // the --comment value; empty when none
  uint64_t packets = 0;  // packet counter
  uint64_t bytes = 0;    // byte counter
};

/// The filter and nat rules of `iptables-save [-c]` output (other tables skipped). Internal when a line is
/// not understood or a table has no COMMIT (truncated output).
Result<std::vector<RuleLine>> ParseIptablesSave(const std::string& text);

/// Every rule of the filter and nat tables, with counters. Unavailable when iptables-save fails.
Result<std::vector<RuleLine>> ListRules(const IptablesOptions& opts);

/// The rules whose comment starts with "<tag_prefix><vm_id>:", in rule-set order.
Result<std::vector<RuleLine>> ListVmRules(const IptablesOptions& opts, const std::string& vm_id);

/// In one transaction: creates the fcwarm chains and jumps that are missing, deletes every rule of `family`,
/// then appends `rules`, each tagged "<family>:<new nonce>". Returns that tag. Calling it twice leaves one
/// copy.
Result<std::string> ReplaceTaggedRules(const IptablesOptions& opts, const std::string& family,
                                       const std::vector<NewRule>& rules);

/// Deletes every rule tagged `tag` — a family (all of a VM's rules of one kind) or one apply's tag — in one
/// transaction. Ok when there is none.
Status DeleteTaggedRules(const IptablesOptions& opts, const std::string& tag);

/// Crash recovery: deletes every rule whose tag starts with `tag_prefix` and names a VM not in `live_vm_ids`.
/// Returns the VM ids whose rules were removed (sorted, unique).
Result<std::vector<std::string>> SweepRules(const IptablesOptions& opts,
                                            const std::set<std::string>& live_vm_ids);

/// The VM id a per-VM tag names ("<tag_prefix><vm id>:<kind>[:<nonce>]"); empty when `comment` is not one.
std::string VmIdOfTag(const IptablesOptions& opts, const std::string& comment);

/// Deletes every rule (egress and published ports alike) tagged for one of `vm_ids`, in one transaction, and
/// returns the ids whose rules were removed (sorted, unique). Rules of other VMs are never touched: the
/// startup sweep of the VMs one store knows, while other fcwarm processes keep theirs.
Result<std::vector<std::string>> DeleteVmRules(const IptablesOptions& opts,
                                               const std::set<std::string>& vm_ids);

/// Creates the fcwarm chains and jumps that are missing (ReplaceTaggedRules does it too).
Status EnsureBaseChains(const IptablesOptions& opts);

/// Removes the fcwarm jumps and chains. FailedPrecondition (naming a tag) while a tagged rule is left; Ok
/// when they are gone already. For uninstalling and tests; a running server leaves them in place.
Status RemoveBaseChains(const IptablesOptions& opts);

/// Owns the rules of one apply (one tag) and the sysctls changed for them. Release() deletes exactly those
/// rules, so a handle whose rules were replaced by a later apply for the same VM deletes nothing; the sysctls
/// are restored when no rule of the family is left and the interface they belong to still exists. Release()
/// is idempotent; the destructor calls it. Thread safety: not thread-safe; owned by one VM object that
/// serializes access.
class RuleHandle {
 public:
  /// `sysctls`: (key, value to restore) pairs, undone in reverse order after the rules are deleted.
  RuleHandle(IptablesOptions opts, std::string family, std::string tag,
             std::vector<std::pair<std::string, std::string>> sysctls)
      : opts_(std::move(opts)),
        family_(std::move(family)),
        tag_(std::move(tag)),
        sysctls_(std::move(sysctls)) {}
  ~RuleHandle() { (void)Release(); }
  RuleHandle(const RuleHandle&) = delete;
  RuleHandle& operator=(const RuleHandle&) = delete;

  /// Deletes the rules tagged tag() and restores the sysctls (see above). Ok when they are gone already.
  Status Release();
  /// The comment every rule of this handle carries.
  const std::string& tag() const { return tag_; }
  /// False once Release() succeeded.
  bool active() const { return active_; }
  /// Lets go of the rules without deleting them (their VM keeps running for a later process to adopt).
  void Forget() { active_ = false; }

 private:
  IptablesOptions opts_;
  std::string family_;
  std::string tag_;
  std::vector<std::pair<std::string, std::string>> sysctls_;
  bool active_ = true;
};

/// Writes a sysctl under /proc/sys (e.g. "net/ipv4/ip_forward") when its value differs. Returns the previous
/// value (trimmed).
Result<std::string> SetSysctl(const std::string& key, const std::string& value);
/// Reads a sysctl under /proc/sys (trimmed).
Result<std::string> GetSysctl(const std::string& key);

}  // namespace fcwarm::net
