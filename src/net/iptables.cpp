#include "net/iptables.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>

#include "util/common.hpp"
#include "util/process.hpp"

namespace fcwarm::net {

namespace {

// The rule set as iptables-save printed it: rules in order, and the chains of each table.
struct SaveState {
  std::vector<RuleLine> rules;
  std::map<std::string, std::set<std::string>> chains;  // table → chain names

  bool HasChain(const std::string& table, const std::string& chain) const {
    auto it = chains.find(table);
    return it != chains.end() && it->second.count(chain) != 0;
  }
  std::vector<const RuleLine*> In(const std::string& table, const std::string& chain) const {
    std::vector<const RuleLine*> out;
    for (const auto& r : rules) {
      if (r.table == table && r.chain == chain) out.push_back(&r);
    }
    return out;
  }
};

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r' || s.back() == '\t'))
    s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

std::string Join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + a;
  return out;
}

// The value of `--comment` in a rule as iptables-save prints it ("quoted", with \" escapes, or a bare word).
std::string CommentOf(const std::string& spec) {
  static const std::string kKey = "--comment ";
  auto pos = spec.find(kKey);
  if (pos == std::string::npos) return "";
  pos += kKey.size();
  std::string out;
  if (pos < spec.size() && spec[pos] == '"') {
    for (size_t i = pos + 1; i < spec.size(); ++i) {
      if (spec[i] == '\\' && i + 1 < spec.size()) {
        out += spec[++i];
      } else if (spec[i] == '"') {
        break;
      } else {
        out += spec[i];
      }
    }
    return out;
  }
  auto end = spec.find(' ', pos);
  return spec.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
}

// "... -j NAME" (NAME the last word): the rule jumps to NAME.
bool JumpsTo(const RuleLine& r, const std::string& chain) {
  const std::string tail = "-j " + chain;
  return r.spec == tail || (r.spec.size() > tail.size() && r.spec.compare(r.spec.size() - tail.size() - 1,
                                                                          tail.size() + 1, " " + tail) == 0);
}

Result<SaveState> ParseSave(const std::string& text) {
  SaveState st;
  std::string table;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '*') {
      if (!table.empty()) return Status::Internal("iptables-save: table " + table + " has no COMMIT");
      table = line.substr(1);
      st.chains[table];
      continue;
    }
    if (line == "COMMIT") {
      table.clear();
      continue;
    }
    if (table.empty())
      return Status::Internal("iptables-save: line outside a table: '" + line.substr(0, 200) + "'");
    if (line[0] == ':') {
      auto sp = line.find(' ');
      st.chains[table].insert(line.substr(1, sp == std::string::npos ? std::string::npos : sp - 1));
      continue;
    }
    RuleLine r;
    r.table = table;
    std::string rest = line;
    if (rest[0] == '[') {  // "[packets:bytes] "
      auto close = rest.find("] ");
      auto colon = rest.find(':');
      if (close == std::string::npos || colon == std::string::npos || colon > close) {
        return Status::Internal("iptables-save: unexpected line '" + line.substr(0, 200) + "'");
      }
      r.packets = std::strtoull(rest.c_str() + 1, nullptr, 10);
      r.bytes = std::strtoull(rest.c_str() + colon + 1, nullptr, 10);
      rest = rest.substr(close + 2);
    }
    if (rest.rfind("-A ", 0) != 0) {
      return Status::Internal("iptables-save: unexpected line '" + line.substr(0, 200) + "'");
    }
    auto sp = rest.find(' ', 3);
    r.chain = rest.substr(3, sp == std::string::npos ? std::string::npos : sp - 3);
    r.spec = sp == std::string::npos ? "" : rest.substr(sp + 1);
    r.comment = CommentOf(r.spec);
    if (table == "filter" || table == "nat") st.rules.push_back(std::move(r));
  }
  if (!table.empty())
    return Status::Internal("iptables-save: table " + table + " has no COMMIT (truncated?)");
  return st;
}

// A program's exit code, stdout and stderr, kept apart (util::Run mixes them and keeps at most 1 MiB, while a
// large host's rule set is bigger and a warning on stderr must not land in the middle of the rules).
struct Captured {
  int exit_code = -1;
  std::string out, err;
};

Result<Captured> RunCapture(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  constexpr size_t kMax = 64u << 20;
  int fds[2] = {::memfd_create("fcwarm-stdout", MFD_CLOEXEC), ::memfd_create("fcwarm-stderr", MFD_CLOEXEC)};
  auto close_fds = [&] {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
  };
  if (fds[0] < 0 || fds[1] < 0) {
    int err = errno;
    close_fds();
    return Status::Unavailable(std::string("memfd_create: ") + std::strerror(err));
  }
  util::SpawnOptions so;
  so.argv = argv;
  so.stdout_path = "/proc/self/fd/" + std::to_string(fds[0]);
  so.stderr_path = "/proc/self/fd/" + std::to_string(fds[1]);
  auto child = util::Spawn(so);
  if (!child.ok()) {
    close_fds();
    return child.status();
  }
  auto status = util::WaitFor(child->pid, timeout);
  if (!status) {
    util::TerminateAndReap(child->pid, std::chrono::milliseconds(0));
    close_fds();
    return Status::DeadlineExceeded(argv[0] + " did not finish within " + std::to_string(timeout.count()) +
                                    " ms");
  }
  Captured c;
  c.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
  std::string* dest[2] = {&c.out, &c.err};
  for (int i = 0; i < 2; ++i) {
    ::lseek(fds[i], 0, SEEK_SET);
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fds[i], buf, sizeof(buf))) > 0) {
      if (dest[i]->size() + static_cast<size_t>(n) > kMax) {
        close_fds();
        return Status::Unavailable(argv[0] + " printed more than 64 MiB");
      }
      dest[i]->append(buf, static_cast<size_t>(n));
    }
  }
  close_fds();
  return c;
}

Result<SaveState> ReadState(const IptablesOptions& opts) {
  auto r = RunCapture({opts.iptables_save, "-c"}, opts.timeout);
  if (!r.ok()) return r.status().WithContext(opts.iptables_save);
  if (r->exit_code != 0) {
    return Status::Unavailable(opts.iptables_save + " -c failed (exit " + std::to_string(r->exit_code) +
                               "): " + Trim(r->err + r->out).substr(0, 400));
  }
  return ParseSave(r->out);
}

// Holds the process-wide mutex and an exclusive flock on the lock file (when it can be opened) while alive.
class TransactionLock {
 public:
  explicit TransactionLock(const std::string& path) : guard_(Mutex()) {
    if (path.empty()) return;
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ >= 0) {
      while (::flock(fd_, LOCK_EX) < 0 && errno == EINTR) {
      }
    }
  }
  ~TransactionLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the flock
  }
  TransactionLock(const TransactionLock&) = delete;
  TransactionLock& operator=(const TransactionLock&) = delete;

 private:
  static std::mutex& Mutex() {
    static std::mutex m;
    return m;
  }
  std::lock_guard<std::mutex> guard_;
  int fd_ = -1;
};

// Runs iptables-restore --noflush on `text` (passed through a memfd, never a shell).
Status Restore(const IptablesOptions& opts, const std::string& text) {
  auto memfd = util::MemfdWithText("fcwarm-iptables", text);
  if (!memfd.ok()) return memfd.status();
  int fd = *memfd;
  // "-w" takes an optional number of seconds from the next word unless it starts with '-': keep an option
  // after it, or the file name would be taken for the wait time (and the batch read from stdin).
  std::vector<std::string> argv{opts.iptables_restore, "-w", "--noflush",
                                "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd)};
  auto r = util::Run(argv, opts.timeout);
  ::close(fd);
  if (!r.ok()) return r.status().WithContext(Join(argv));
  if (r->exit_code != 0) {
    return Status::Unavailable(opts.iptables_restore + " failed (exit " + std::to_string(r->exit_code) +
                               "): " + Trim(r->output).substr(0, 400) + " [batch: " + text.substr(0, 800) +
                               "]");
  }
  return Status::Ok();
}

// Restore text, by table (filter first, then nat).
struct Batch {
  std::vector<std::string> filter, nat;
  std::vector<std::string>& For(const std::string& table) { return table == "nat" ? nat : filter; }
  std::string Text() const {
    std::string out;
    if (!filter.empty()) {
      out += "*filter\n";
      for (const auto& l : filter) out += l + "\n";
      out += "COMMIT\n";
    }
    if (!nat.empty()) {
      out += "*nat\n";
      for (const auto& l : nat) out += l + "\n";
      out += "COMMIT\n";
    }
    return out;
  }
};

struct Jump {
  std::string table, parent, chain;
  std::vector<std::string> match;  // before "-j chain"
};

std::vector<std::pair<std::string, std::string>> BaseChains(const IptablesOptions& o) {
  return {{"filter", ChainName(o, "INPUT")}, {"filter", ChainName(o, "FORWARD")},
          {"filter", ChainName(o, "PORTS")}, {"filter", ChainName(o, "EGRESS")},
          {"nat", ChainName(o, "DNAT")},     {"nat", ChainName(o, "POSTROUTING")}};
}

std::vector<Jump> BaseJumps(const IptablesOptions& o) {
  return {{"filter", "INPUT", ChainName(o, "INPUT"), {}},
          {"filter", "FORWARD", ChainName(o, "FORWARD"), {}},
          {"nat", "PREROUTING", ChainName(o, "DNAT"), {"-m", "addrtype", "--dst-type", "LOCAL"}},
          {"nat", "OUTPUT", ChainName(o, "DNAT"), {"-m", "addrtype", "--dst-type", "LOCAL"}},
          {"nat", "POSTROUTING", ChainName(o, "POSTROUTING"), {}}};
}

// Lines that create what is missing of the base layout.
void AddBaseLines(const IptablesOptions& o, const SaveState& st, Batch* b) {
  for (const auto& [table, chain] : BaseChains(o)) {
    if (!st.HasChain(table, chain)) b->For(table).push_back("-N " + chain);
  }
  for (const auto& j : BaseJumps(o)) {
    auto rules = st.In(j.table, j.parent);
    bool present =
        std::any_of(rules.begin(), rules.end(), [&](const RuleLine* r) { return JumpsTo(*r, j.chain); });
    if (!present) {
      std::string m = Join(j.match);
      b->For(j.table).push_back("-I " + j.parent + " 1 " + (m.empty() ? "" : m + " ") + "-j " + j.chain);
    }
  }
  // FCWARM-FORWARD holds exactly two jumps, published ports before the egress policy.
  const std::string fwd = ChainName(o, "FORWARD");
  auto rules = st.In("filter", fwd);
  bool exact = rules.size() == 2 && rules[0]->spec == "-j " + ChainName(o, "PORTS") &&
               rules[1]->spec == "-j " + ChainName(o, "EGRESS");
  if (!exact) {
    if (!rules.empty()) b->filter.push_back("-F " + fwd);
    b->filter.push_back("-A " + fwd + " -j " + ChainName(o, "PORTS"));
    b->filter.push_back("-A " + fwd + " -j " + ChainName(o, "EGRESS"));
  }
}

Status CheckWord(const std::string& w) {
  if (w.empty() || w.find_first_of(" \t\r\n\"'\\#") != std::string::npos) {
    return Status::InvalidArgument("unsafe word '" + w.substr(0, 80) + "' in an iptables rule");
  }
  return Status::Ok();
}

// Runs `build` on the current rule set and restores what it returns; re-reads and retries once when
// iptables-restore refuses the batch (the rule set changed under us). Empty text: nothing to do.
Status Transact(const IptablesOptions& opts,
                const std::function<Result<std::string>(const SaveState&)>& build) {
  TransactionLock lock(opts.lock_path);
  Status last;
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto st = ReadState(opts);
    if (!st.ok()) return st.status();
    auto text = build(*st);
    if (!text.ok()) return text.status();
    if (text->empty()) return Status::Ok();
    last = Restore(opts, *text);
    if (last.ok()) return last;
  }
  return last;
}

// The comment belongs to `tag` (a family or one apply's tag).
bool Tagged(const std::string& comment, const std::string& tag) {
  return comment.rfind(tag, 0) == 0 && (comment.size() == tag.size() || comment[tag.size()] == ':');
}

// 8 hex digits, new for every apply.
std::string Nonce() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}() ^ (static_cast<uint64_t>(::getpid()) << 32));
  std::lock_guard<std::mutex> lock(mu);
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", static_cast<unsigned>(rng() & 0xffffffffu));
  return buf;
}

void AddDeletes(const SaveState& st, const std::function<bool(const RuleLine&)>& pick, Batch* b) {
  for (const auto& r : st.rules) {
    if (pick(r)) b->For(r.table).push_back("-D " + r.chain + " " + r.spec);
  }
}

}  // namespace

std::string RuleTag(const IptablesOptions& opts, const std::string& vm_id, RuleKind kind) {
  return opts.tag_prefix + vm_id + (kind == RuleKind::kEgress ? ":egress" : ":ports");
}

std::string ChainName(const IptablesOptions& opts, const std::string& suffix) {
  return opts.chain_prefix + "-" + suffix;
}

Status ValidateVmId(const std::string& vm_id) {
  static const std::regex kId("^[A-Za-z0-9_.-]{1,64}$");
  if (!std::regex_match(vm_id, kId)) {
    return Status::InvalidArgument("vm_id '" + vm_id.substr(0, 80) +
                                   "' is invalid (1-64 letters, digits, '_', '.', '-')");
  }
  return Status::Ok();
}

Status ValidateInterface(const std::string& name, const std::string& field) {
  static const std::regex kName("^[A-Za-z0-9_.-]{1,15}$");
  if (!std::regex_match(name, kName)) {
    return Status::InvalidArgument(field + ": interface name '" + name.substr(0, 80) +
                                   "' is invalid (1-15 letters, digits, '_', '.', '-')");
  }
  return Status::Ok();
}

Result<std::vector<RuleLine>> ParseIptablesSave(const std::string& text) {
  auto st = ParseSave(text);
  if (!st.ok()) return st.status();
  return std::move(st->rules);
}

Result<std::vector<RuleLine>> ListRules(const IptablesOptions& opts) {
  auto st = ReadState(opts);
  if (!st.ok()) return st.status();
  return std::move(st->rules);
}

Result<std::vector<RuleLine>> ListVmRules(const IptablesOptions& opts, const std::string& vm_id) {
  auto all = ListRules(opts);
  if (!all.ok()) return all.status();
  std::vector<RuleLine> out;
  const std::string prefix = opts.tag_prefix + vm_id + ":";
  for (auto& r : *all) {
    if (r.comment.rfind(prefix, 0) == 0) out.push_back(std::move(r));
  }
  return out;
}

Result<std::string> ReplaceTaggedRules(const IptablesOptions& opts, const std::string& family,
                                       const std::vector<NewRule>& rules) {
  const std::string tag = family + ":" + Nonce();
  if (auto st = CheckWord(tag); !st.ok()) return st;
  std::vector<std::pair<std::string, std::string>> lines;  // table, "-A ..." line
  for (const auto& r : rules) {
    if (r.table != "filter" && r.table != "nat")
      return Status::InvalidArgument("unknown table '" + r.table + "'");
    std::string line = "-A " + r.chain;
    for (const auto* part : {&r.match}) {
      for (const auto& w : *part) {
        if (auto st = CheckWord(w); !st.ok()) return st;
        line += " " + w;
      }
    }
    line += " -m comment --comment \"" + tag + "\" -j";
    for (const auto& w : r.target) {
      if (auto st = CheckWord(w); !st.ok()) return st;
      line += " " + w;
    }
    if (auto st = CheckWord(r.chain); !st.ok()) return st;
    lines.emplace_back(r.table, std::move(line));
  }
  Status st = Transact(opts, [&](const SaveState& st) -> Result<std::string> {
    Batch b;
    AddBaseLines(opts, st, &b);
    AddDeletes(
        st, [&](const RuleLine& r) { return Tagged(r.comment, family); }, &b);
    for (const auto& [table, line] : lines) b.For(table).push_back(line);
    return b.Text();
  });
  if (!st.ok()) return st;
  return tag;
}

Status DeleteTaggedRules(const IptablesOptions& opts, const std::string& tag) {
  return Transact(opts, [&](const SaveState& st) -> Result<std::string> {
    Batch b;
    AddDeletes(
        st, [&](const RuleLine& r) { return Tagged(r.comment, tag); }, &b);
    return b.Text();
  });
}

std::string VmIdOfTag(const IptablesOptions& opts, const std::string& comment) {
  if (opts.tag_prefix.empty() || comment.rfind(opts.tag_prefix, 0) != 0) return "";
  std::string rest = comment.substr(opts.tag_prefix.size());
  auto colon = rest.find(':');  // VM ids have no ':'
  if (colon == std::string::npos || colon == 0) return "";
  return rest.substr(0, colon);
}

namespace {

// Deletes, in one transaction, every tagged rule whose VM id `doomed` accepts; returns those ids.
Result<std::vector<std::string>> DeleteRulesOfVms(const IptablesOptions& opts,
                                                  const std::function<bool(const std::string&)>& doomed) {
  std::set<std::string> removed;
  Status st = Transact(opts, [&](const SaveState& state) -> Result<std::string> {
    removed.clear();
    Batch b;
    AddDeletes(
        state,
        [&](const RuleLine& r) {
          std::string vm = VmIdOfTag(opts, r.comment);
          if (vm.empty() || !doomed(vm)) return false;
          removed.insert(vm);
          return true;
        },
        &b);
    return b.Text();
  });
  if (!st.ok()) return st;
  return std::vector<std::string>(removed.begin(), removed.end());
}

}  // namespace

Result<std::vector<std::string>> SweepRules(const IptablesOptions& opts,
                                            const std::set<std::string>& live_vm_ids) {
  return DeleteRulesOfVms(opts, [&](const std::string& vm) { return live_vm_ids.count(vm) == 0; });
}

Result<std::vector<std::string>> DeleteVmRules(const IptablesOptions& opts,
                                               const std::set<std::string>& vm_ids) {
  if (vm_ids.empty()) return std::vector<std::string>();
  return DeleteRulesOfVms(opts, [&](const std::string& vm) { return vm_ids.count(vm) != 0; });
}

Status EnsureBaseChains(const IptablesOptions& opts) {
  return Transact(opts, [&](const SaveState& st) -> Result<std::string> {
    Batch b;
    AddBaseLines(opts, st, &b);
    return b.Text();
  });
}

Status RemoveBaseChains(const IptablesOptions& opts) {
  return Transact(opts, [&](const SaveState& st) -> Result<std::string> {
    for (const auto& r : st.rules) {
      if (r.comment.rfind(opts.tag_prefix, 0) == 0) {
        return Status::FailedPrecondition("fcwarm iptables chains still hold rules of '" + r.comment +
                                          "' (release them or sweep first)");
      }
    }
    Batch b;
    for (const auto& j : BaseJumps(opts)) {
      for (const RuleLine* r : st.In(j.table, j.parent)) {
        if (JumpsTo(*r, j.chain)) b.For(j.table).push_back("-D " + r->chain + " " + r->spec);
      }
    }
    for (const auto& [table, chain] : BaseChains(opts)) {
      if (st.HasChain(table, chain)) b.For(table).push_back("-F " + chain);
    }
    for (const auto& [table, chain] : BaseChains(opts)) {
      if (st.HasChain(table, chain)) b.For(table).push_back("-X " + chain);
    }
    return b.Text();
  });
}

Status RuleHandle::Release() {
  if (!active_) return Status::Ok();
  if (auto st = DeleteTaggedRules(opts_, tag_); !st.ok()) return st;
  Status result;
  if (!sysctls_.empty()) {
    // A later apply for the same VM replaced our rules and relies on the same settings: leave them to it.
    auto rules = ListRules(opts_);
    if (!rules.ok()) return rules.status();
    for (const auto& r : *rules) {
      if (Tagged(r.comment, family_)) {
        active_ = false;
        return Status::Ok();
      }
    }
  }
  for (auto it = sysctls_.rbegin(); it != sysctls_.rend(); ++it) {
    // A per-interface sysctl of an interface that is gone (the VM's veth was deleted) needs no restoring.
    if (!GetSysctl(it->first).ok()) continue;
    if (auto r = SetSysctl(it->first, it->second); !r.ok() && result.ok()) result = r.status();
  }
  active_ = false;
  return result;
}

Result<std::string> GetSysctl(const std::string& key) {
  if (key.empty() || key.find("..") != std::string::npos || key[0] == '/') {
    return Status::InvalidArgument("sysctl key '" + key + "' is invalid");
  }
  auto text = util::ReadFile("/proc/sys/" + key, 4096);
  if (!text.ok()) return text.status().WithContext("sysctl " + key);
  return Trim(*text);
}

Result<std::string> SetSysctl(const std::string& key, const std::string& value) {
  auto old = GetSysctl(key);
  if (!old.ok()) return old.status();
  if (*old == value) return old;
  int fd = ::open(("/proc/sys/" + key).c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::Unavailable("sysctl " + key + ": open: " + std::strerror(errno));
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size())) {
    return Status::Unavailable("sysctl " + key + " = " + value + ": " + std::strerror(err));
  }
  return old;
}

}  // namespace fcwarm::net
