// Host networking against the real kernel (label `net`, needs root): published ports and egress policy
// applied with iptables, checked with real TCP/UDP traffic and the rules' packet counters.
//
// Safety: main() moves this whole process into a network namespace of its own before anything else runs, so
// the "host" of these tests is that namespace: its iptables tables, sysctls (ip_forward, route_localnet) and
// interfaces are not the machine's, and it has no uplink — only the veth pairs to the namespaces a test
// creates (a fake guest, another VM, a "registry", an "internet" host, a LAN host). No packet can leave the
// machine, whatever the rules say. Every namespace, server, rule and sysctl a test creates is removed by the
// test (scope guards), and the rule set is compared with the one from before.
#define DOCTEST_CONFIG_IMPLEMENT
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include "net/egress.hpp"
#include "net/iptables.hpp"
#include "net/ports.hpp"
#include "util/common.hpp"
#include "util/process.hpp"
#include "util/scope_guard.hpp"

using namespace fcwarm;
using namespace fcwarm::net;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const char* kPython = "/usr/bin/python3";

// Answers every TCP connection and UDP datagram on `port` with "<name> <peer address>".
const char* kServer = R"PY(
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))
    while True:
        d, a = u.recvfrom(2048)
        u.sendto(("%s %s" % (name, a[0])).encode(), a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(16)
while True:
    c, a = s.accept()
    try:
        c.sendall(("%s %s" % (name, a[0])).encode())
    finally:
        c.close()
)PY";

// Connects (tcp|udp) to host:port, optionally from a source address; prints the answer or "ERR <reason>".
const char* kClient = R"PY(
import socket, sys
proto, host, port, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    if proto == "udp":
        s.send(b"ping")
    print(s.recv(200).decode().strip())
except Exception as e:
    print("ERR %s %s" % (type(e).__name__, e))
)PY";

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string Must(const std::vector<std::string>& argv) {
  auto r = util::Run(argv, 20s);
  std::string cmd;
  for (const auto& a : argv) cmd += a + " ";
  REQUIRE_MESSAGE(r.ok(), cmd << r.status().ToString());
  REQUIRE_MESSAGE(r->exit_code == 0, cmd << "-> " << r->output);
  return r->output;
}

// filter + nat as iptables-save prints them, without comments and counters.
std::string RuleSet() {
  std::string out;
  for (const char* table : {"filter", "nat"}) {
    std::istringstream in(Must({"iptables-save", "-t", table}));
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      if (line[0] == ':') line = line.substr(0, line.rfind(" ["));  // ":INPUT ACCEPT [12:345]"
      out += line + "\n";
    }
  }
  return out;
}

// The current network namespace of a process, as /proc/<pid>/ns/net names it.
std::string NetnsOf(const std::string& pid) {
  std::error_code ec;
  return fs::read_symlink("/proc/" + pid + "/ns/net", ec).string();
}

// A client in this process (the "host"): "<answer>" or "ERR <errno text>".
std::string Ask(const std::string& proto, const std::string& ip, uint16_t port) {
  int fd = ::socket(AF_INET, (proto == "tcp" ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  util::ScopeGuard close_fd([&] { ::close(fd); });
  timeval tv{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0)
    return std::string("ERR ") + std::strerror(errno);
  if (proto == "udp" && ::send(fd, "ping", 4, 0) != 4) return std::string("ERR ") + std::strerror(errno);
  char buf[256];
  ssize_t n = ::recv(fd, buf, sizeof(buf) - 1, 0);
  if (n < 0) return std::string("ERR ") + std::strerror(errno);
  return Trim(std::string(buf, static_cast<size_t>(n)));
}

// Replaces the filter and nat tables of this process's namespace (ours alone) with `text`.
bool RestoreTables(const std::string& text) {
  auto path = fs::temp_directory_path() / ("fcwt" + std::to_string(::getpid()) + "-tables");
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  std::fputs(text.c_str(), f);
  std::fclose(f);
  util::ScopeGuard rm([&] {
    std::error_code ec;
    fs::remove(path, ec);
  });
  // No "-w" here: it would take the file name for its optional number of seconds.
  auto r = util::Run({"iptables-restore", path.string()}, 20s);
  return r.ok() && r->exit_code == 0;
}

const char* kEmptyTables =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT "
    "[0:0]\nCOMMIT\n";

// A host that already has a firewall: FORWARD policy DROP (as on a Docker host) and rules of its own.
void SeedHostRules() {
  REQUIRE(RestoreTables(
      "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
      "-A INPUT -i lo -m comment --comment host-own -j ACCEPT\n"
      "-A FORWARD -i nowhere0 -m comment --comment host-own -j ACCEPT\nCOMMIT\n"
      "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
      "-A POSTROUTING -o nowhere0 -m comment --comment host-own -j MASQUERADE\nCOMMIT\n"));
}

// Namespaces, veth pairs, routes, servers and iptables rules of one test; all removed by the destructor, also
// when a check failed.
class Lab {
 public:
  Lab() : id_("fcwt" + std::to_string(::getpid()) + static_cast<char>('a' + Count()++ % 26)) {
    lock_dir_ = fs::temp_directory_path() / (id_ + "-lock");
    fs::create_directories(lock_dir_);
    opts.lock_path = (lock_dir_ / "iptables.lock").string();
  }
  ~Lab() {
    // The tables back to empty (the test seeded them; the namespace is this process's alone).
    (void)RestoreTables(kEmptyTables);
    for (const auto& c : servers_) util::TerminateAndReap(c.pid, 1000ms);
    // The host ends first: a deleted namespace takes its devices (and their peers) with it only
    // asynchronously.
    for (const auto& v : veths_) (void)util::Run({"ip", "link", "del", v}, 10s);
    for (const auto& ns : namespaces_) (void)util::Run({"ip", "netns", "del", ns}, 10s);
    for (const auto& route : routes_) (void)util::Run({"ip", "route", "del", route}, 10s);
    std::error_code ec;
    fs::remove_all(lock_dir_, ec);
  }
  Lab(const Lab&) = delete;
  Lab& operator=(const Lab&) = delete;

  // A namespace "<id><suffix>" joined to the host by a veth pair "<id><suffix>h" (host) / "eth0" (inside),
  // with `host_cidr` on the host end and `inside_cidr` inside; `gateway`: the inside's default route.
  std::string Namespace(const std::string& suffix, const std::string& host_cidr,
                        const std::string& inside_cidr, const std::string& gateway = "") {
    std::string ns = id_ + suffix, veth = id_ + suffix + "h";
    Must({"ip", "netns", "add", ns});
    namespaces_.push_back(ns);
    Must({"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns});
    veths_.push_back(veth);
    Must({"ip", "addr", "add", host_cidr, "dev", veth});
    Must({"ip", "link", "set", veth, "up"});
    Must({"ip", "-n", ns, "addr", "add", inside_cidr, "dev", "eth0"});
    Must({"ip", "-n", ns, "link", "set", "eth0", "up"});
    Must({"ip", "-n", ns, "link", "set", "lo", "up"});
    if (!gateway.empty()) Must({"ip", "-n", ns, "route", "add", "default", "via", gateway});
    return ns;
  }
  std::string Veth(const std::string& suffix) const { return id_ + suffix + "h"; }

  void Route(const std::string& dest, const std::string& via) {
    Must({"ip", "route", "add", dest, "via", via});
    routes_.push_back(dest);
  }

  // Starts the answering server in `ns` ("": the host) and waits until `ip:port` answers from the host.
  void Server(const std::string& ns, const std::string& name, uint16_t port, const std::string& ip) {
    util::SpawnOptions so;
    so.argv = {kPython, "-c", kServer, name, std::to_string(port)};
    so.netns = ns;
    auto child = util::Spawn(so);
    REQUIRE_MESSAGE(child.ok(), child.status().ToString());
    servers_.push_back(*child);
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (Ask("tcp", ip, port).rfind(name + " ", 0) != 0) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "server " << name << " did not answer");
      std::this_thread::sleep_for(50ms);
    }
  }

  // A client inside `ns`: the server's answer, or "ERR ...".
  std::string AskFrom(const std::string& ns, const std::string& proto, const std::string& ip, uint16_t port,
                      const std::string& src = "") {
    return Trim(
        Must({"ip", "netns", "exec", ns, kPython, "-c", kClient, proto, ip, std::to_string(port), src}));
  }

  const std::string& id() const { return id_; }
  IptablesOptions opts;

 private:
  std::string id_;
  fs::path lock_dir_;
  static int& Count() {
    static int n = 0;
    return n;
  }
  std::vector<std::string> namespaces_, veths_, routes_;
  std::vector<util::Child> servers_;
};

// Packets counted so far by the VM's rules in `chain` ("": any) whose spec contains every one of `parts`.
uint64_t Packets(const Lab& lab, const std::string& vm, const std::string& chain,
                 std::initializer_list<std::string> parts) {
  auto rules = ListVmRules(lab.opts, vm);
  REQUIRE_MESSAGE(rules.ok(), rules.status().ToString());
  uint64_t n = 0;
  int matched = 0;
  for (const auto& r : *rules) {
    if (!chain.empty() && r.chain != chain) continue;
    if (std::all_of(parts.begin(), parts.end(),
                    [&](const std::string& p) { return r.spec.find(p) != std::string::npos; })) {
      n += r.packets;
      ++matched;
    }
  }
  REQUIRE_MESSAGE(matched > 0, "no rule of " << vm << " matches");
  return n;
}

// Saves a sysctl and restores it at scope end.
struct SysctlGuard {
  std::string key, value;
  explicit SysctlGuard(std::string k) : key(std::move(k)) {
    auto v = GetSysctl(key);
    REQUIRE(v.ok());
    value = *v;
  }
  ~SysctlGuard() { (void)SetSysctl(key, value); }
};

// Rounds of apply + release of egress and ports for one VM (index n picks distinct names and addresses);
// 0 when every call succeeded. Used by threads of the test and by --race-worker processes.
int RaceRounds(const std::string& vm, int n, const IptablesOptions& opts) {
  for (int round = 0; round < 3; ++round) {
    std::string veth = "fcwtrace" + std::to_string(n);
    std::string ip = "10.213.1." + std::to_string(4 * n + 2);
    auto e = ApplyEgress({vm, veth, ip}, opts);
    auto ports = ParsePorts({"198.51.100.1:" + std::to_string(20000 + n) + ":80"});
    auto p = ports.ok() ? PublishPorts({vm, veth, ip, *ports}, opts)
                        : Result<std::unique_ptr<RuleHandle>>(ports.status());
    for (const Status& st : {e.status(), p.status()}) {
      if (!st.ok()) {
        std::printf("%s round %d: %s\n", vm.c_str(), round, st.ToString().c_str());
        return 1;
      }
    }
    for (const Status& st : {(*e)->Release(), (*p)->Release()}) {
      if (!st.ok()) {
        std::printf("%s round %d release: %s\n", vm.c_str(), round, st.ToString().c_str());
        return 1;
      }
    }
  }
  return 0;
}

}  // namespace

TEST_CASE("this test runs in a network namespace of its own (never the machine's firewall)") {
  auto self = NetnsOf("self");
  auto child = Trim(Must({"readlink", "/proc/self/ns/net"}));
  CHECK(self == child);
  CHECK(self != NetnsOf("1"));
}

TEST_CASE(
    "published ports: 127.0.0.1 and 0.0.0.0 reach the guest over TCP and UDP, release restores the rule "
    "set") {
  Lab lab;
  SysctlGuard fwd("net/ipv4/ip_forward");
  SeedHostRules();
  std::string guest = lab.Namespace("g", "10.213.0.21/30", "10.213.0.22/30", "10.213.0.21");
  lab.Namespace("i", "198.51.100.1/24", "198.51.100.7/24");  // another host, "outside"
  std::string outside = lab.id() + "i";
  const std::string name = "guest-" + lab.id();
  lab.Server(guest, name, 80, "10.213.0.22");
  lab.Server(guest, name, 53, "10.213.0.22");
  std::string veth = lab.Veth("g");
  std::string rl_key = "net/ipv4/conf/" + veth + "/route_localnet";
  REQUIRE(GetSysctl(rl_key).value() == "0");

  const std::string pristine = RuleSet();
  REQUIRE(EnsureBaseChains(lab.opts).ok());
  const std::string with_chains = RuleSet();
  CHECK(with_chains != pristine);
  INFO(with_chains);
  // Our jumps come first, before the host's own rules.
  CHECK(with_chains.find("-A INPUT -j FCWARM-INPUT\n-A INPUT -i lo") != std::string::npos);
  CHECK(with_chains.find("-A FORWARD -j FCWARM-FORWARD\n-A FORWARD -i nowhere0") != std::string::npos);
  REQUIRE(EnsureBaseChains(lab.opts).ok());  // idempotent
  CHECK(RuleSet() == with_chains);

  // Host ports: the kernel's choice for the container-port-only spec, fixed ones from free ports.
  auto ports = ParsePorts({"127.0.0.1::80", "53/udp", "0.0.0.0::80"});
  REQUIRE(ports.ok());
  REQUIRE(AssignHostPorts(&*ports, {}).ok());
  const uint16_t tcp_port = (*ports)[0].host_port, udp_port = (*ports)[1].host_port,
                 any_port = (*ports)[2].host_port;

  PublishRequest req{"vm-ports", veth, "10.213.0.22", *ports};
  auto handle = PublishPorts(req, lab.opts);
  REQUIRE_MESSAGE(handle.ok(), handle.status().ToString());
  util::ScopeGuard release([&] { (void)(*handle)->Release(); });
  CHECK(GetSysctl(rl_key).value() == "1");
  CHECK(GetSysctl("net/ipv4/ip_forward").value() == "1");  // 0.0.0.0 is served from outside: forwarding

  // From the host to 127.0.0.1: the guest answers, and sees the gateway (the 127.0.0.0/8 source is NATed).
  CHECK(Ask("tcp", "127.0.0.1", tcp_port) == name + " 10.213.0.21");
  CHECK(Ask("udp", "127.0.0.1", udp_port) == name + " 10.213.0.21");
  CHECK(Ask("tcp", "127.0.0.1", any_port) == name + " 10.213.0.21");
  // From the host to one of its other addresses (0.0.0.0 binding): no NAT needed.
  CHECK(Ask("tcp", "198.51.100.1", any_port) == name + " 198.51.100.1");
  // From another host: forwarded (through a FORWARD policy DROP), the guest sees the real client.
  CHECK(lab.AskFrom(outside, "tcp", "198.51.100.1", any_port) == name + " 198.51.100.7");
  // A port bound to 127.0.0.1 is not reachable from outside.
  CHECK(lab.AskFrom(outside, "tcp", "198.51.100.1", tcp_port).rfind("ERR ConnectionRefusedError", 0) == 0);
  CHECK(Packets(lab, "vm-ports", "FCWARM-PORTS", {"--dport 80", "--ctstate DNAT"}) >= 1);

  // Published by fcwarm: only the published list tells (nothing is bound), with a 409 code.
  auto busy = CheckPortsFree(*ports, *ports);
  CHECK(busy.code() == StatusCode::kFailedPrecondition);
  CHECK(busy.message().find("already published by fcwarm") != std::string::npos);

  // Publishing again replaces the set atomically: one copy of every rule.
  size_t rules_once = ListVmRules(lab.opts, "vm-ports")->size();
  auto again = PublishPorts(req, lab.opts);
  REQUIRE(again.ok());
  CHECK(ListVmRules(lab.opts, "vm-ports")->size() == rules_once);
  CHECK(Ask("tcp", "127.0.0.1", tcp_port) == name + " 10.213.0.21");

  REQUIRE((*handle)->Release().ok());
  REQUIRE((*handle)->Release().ok());  // idempotent
  REQUIRE((*again)->Release().ok());   // the same tag: nothing left to delete
  CHECK(ListVmRules(lab.opts, "vm-ports")->empty());
  CHECK(RuleSet() == with_chains);
  CHECK(GetSysctl(rl_key).value() == "0");
  CHECK(Ask("tcp", "127.0.0.1", tcp_port).rfind("ERR", 0) == 0);
  CHECK(CheckPortsFree(*ports, {}).ok());

  REQUIRE(RemoveBaseChains(lab.opts).ok());
  CHECK(RuleSet() == pristine);
  REQUIRE(RemoveBaseChains(lab.opts).ok());  // nothing left: still fine
}

TEST_CASE(
    "egress: none allows the registry only, all allows the internet but never the host, other VMs, "
    "link-local or private ranges") {
  Lab lab;
  SysctlGuard fwd("net/ipv4/ip_forward");
  SeedHostRules();
  std::string guest = lab.Namespace("g", "10.213.0.21/30", "10.213.0.22/30", "10.213.0.21");
  std::string other = lab.Namespace("o", "10.213.0.25/30", "10.213.0.26/30", "10.213.0.25");  // another VM
  std::string registry = lab.Namespace("r", "10.99.0.1/24", "10.99.0.7/24");    // mirror, private
  std::string inet = lab.Namespace("i", "198.51.100.1/24", "198.51.100.7/24");  // "internet"
  std::string lan = lab.Namespace("l", "192.168.77.1/24", "192.168.77.7/24");   // host's LAN
  Must({"ip", "-n", inet, "addr", "add", "169.254.169.254/32", "dev", "lo"});   // "metadata"
  lab.Route("169.254.169.254/32", "198.51.100.7");
  Must({"ip", "-n", guest, "addr", "add", "10.213.0.30/32", "dev", "eth0"});  // for a spoofing attempt
  lab.Server(other, "other-vm", 80, "10.213.0.26");
  lab.Server(registry, "registry", 80, "10.99.0.7");
  lab.Server(inet, "internet", 80, "198.51.100.7");
  lab.Server(lan, "lan", 80, "192.168.77.7");
  lab.Server(lan, "resolver", 53, "192.168.77.7");
  const uint16_t hp = 8081;
  lab.Server("", "host", hp, "127.0.0.1");  // a service of the host itself, on every host address

  // Before any policy the guest reaches the host's service (so the probe below can tell a denial).
  CHECK(lab.AskFrom(guest, "tcp", "10.213.0.21", hp) == "host 10.213.0.22");

  REQUIRE(EnsureBaseChains(lab.opts).ok());
  const std::string with_chains = RuleSet();
  const std::string vm = "vm-egress";
  EgressRequest req;
  req.vm_id = vm;
  req.host_veth = lab.Veth("g");
  req.guest_ip = "10.213.0.22";
  req.policy = *ParseEgressPolicy("none");
  req.allow = {"10.99.0.7"};
  req.dns_servers = {"192.168.77.7"};
  req.never = {AddressPoolCidr("10.213.0.0", 16384)->ToString()};
  auto handle = ApplyEgress(req, lab.opts);
  REQUIRE_MESSAGE(handle.ok(), handle.status().ToString());
  util::ScopeGuard release([&] { (void)(*handle)->Release(); });
  CHECK(GetSysctl("net/ipv4/ip_forward").value() == "1");

  const std::string reject = "-j REJECT";
  const std::string final_in = "-i " + req.host_veth + " -m comment";  // "-i <veth> -j REJECT", the last rule

  SUBCASE("none") {
    // The registry: reachable, and it sees the host's address (MASQUERADE), not the guest's.
    CHECK(lab.AskFrom(guest, "tcp", "10.99.0.7", 80) == "registry 10.99.0.1");
    // DNS to the configured resolver (UDP and TCP port 53 only).
    CHECK(lab.AskFrom(guest, "udp", "192.168.77.7", 53) == "resolver 192.168.77.1");
    CHECK(lab.AskFrom(guest, "tcp", "192.168.77.7", 53) == "resolver 192.168.77.1");
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {"-d 192.168.77.7/32", "--dport 53"}) >= 2);

    uint64_t last = Packets(lab, vm, "FCWARM-EGRESS", {final_in, reject});
    // Nothing else: the internet and the resolver's other ports hit the final reject.
    CHECK(lab.AskFrom(guest, "tcp", "198.51.100.7", 80).rfind("ERR", 0) == 0);
    CHECK(lab.AskFrom(guest, "tcp", "192.168.77.7", 80).rfind("ERR", 0) == 0);
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {final_in, reject}) >= last + 2);
  }

  SUBCASE("all") {
    req.policy = *ParseEgressPolicy("all");
    auto changed = ApplyEgress(req, lab.opts);  // replaces the policy atomically
    REQUIRE(changed.ok());
    // The first handle's rules were replaced: releasing it leaves the new policy alone.
    size_t rules = ListVmRules(lab.opts, vm)->size();
    REQUIRE((*handle)->Release().ok());
    CHECK(ListVmRules(lab.opts, vm)->size() == rules);
    handle = std::move(changed);

    CHECK(lab.AskFrom(guest, "tcp", "198.51.100.7", 80) == "internet 198.51.100.1");
    CHECK(lab.AskFrom(guest, "udp", "198.51.100.7", 80) == "internet 198.51.100.1");
    CHECK(lab.AskFrom(guest, "tcp", "10.99.0.7", 80) == "registry 10.99.0.1");  // private, but allowed
    CHECK(lab.AskFrom(guest, "udp", "192.168.77.7", 53) == "resolver 192.168.77.1");

    // A private range: the LAN host's web server.
    uint64_t before = Packets(lab, vm, "FCWARM-EGRESS", {"-d 192.168.0.0/16", reject});
    CHECK(lab.AskFrom(guest, "tcp", "192.168.77.7", 80).rfind("ERR", 0) == 0);
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {"-d 192.168.0.0/16", reject}) == before + 1);
    // Another VM (the guest address pool).
    before = Packets(lab, vm, "FCWARM-EGRESS", {"-d 10.213.0.0/16", reject});
    CHECK(lab.AskFrom(guest, "tcp", "10.213.0.26", 80).rfind("ERR", 0) == 0);
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {"-d 10.213.0.0/16", reject}) == before + 1);
    // Link-local metadata.
    before = Packets(lab, vm, "FCWARM-EGRESS", {"-d 169.254.0.0/16", reject});
    CHECK(lab.AskFrom(guest, "tcp", "169.254.169.254", 80).rfind("ERR", 0) == 0);
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {"-d 169.254.0.0/16", reject}) == before + 1);
    // A spoofed source address.
    before = Packets(lab, vm, "FCWARM-EGRESS", {"! -s 10.213.0.22/32", reject});
    CHECK(lab.AskFrom(guest, "tcp", "198.51.100.7", 80, "10.213.0.30").rfind("ERR", 0) == 0);
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {"! -s 10.213.0.22/32", reject}) >= before + 1);
    // Nobody opens connections to the guest through the host (here: the other VM's namespace).
    before = Packets(lab, vm, "FCWARM-EGRESS", {"-o " + req.host_veth + " -m comment", reject});
    CHECK(lab.AskFrom(other, "tcp", "10.213.0.22", 80).rfind("ERR", 0) == 0);
    CHECK(Packets(lab, vm, "FCWARM-EGRESS", {"-o " + req.host_veth + " -m comment", reject}) >= before + 1);
  }

  // The host's own services, on the gateway and on any other host address: refused (INPUT).
  uint64_t before = Packets(lab, vm, "FCWARM-INPUT", {final_in, reject});
  CHECK(lab.AskFrom(guest, "tcp", "10.213.0.21", hp).rfind("ERR", 0) == 0);
  CHECK(lab.AskFrom(guest, "tcp", "198.51.100.1", hp).rfind("ERR", 0) == 0);
  CHECK(Packets(lab, vm, "FCWARM-INPUT", {final_in, reject}) >= before + 2);
  // The host itself still reaches the guest's services (health checks, published ports).
  lab.Server(guest, "guest", 8080, "10.213.0.22");

  REQUIRE((*handle)->Release().ok());
  REQUIRE((*handle)->Release().ok());
  REQUIRE(ReleaseEgress(vm, lab.opts).ok());  // by id, nothing left: fine
  CHECK(ListVmRules(lab.opts, vm)->empty());
  CHECK(RuleSet() == with_chains);
  REQUIRE(RemoveBaseChains(lab.opts).ok());
}

TEST_CASE("sweep removes the rules of VMs that no longer exist, and racing VMs keep one set of chains") {
  Lab lab;
  SysctlGuard fwd("net/ipv4/ip_forward");
  SeedHostRules();
  const std::string pristine = RuleSet();
  util::ScopeGuard cleanup([&] {
    (void)SweepRules(lab.opts, {});
    (void)RemoveBaseChains(lab.opts);
  });

  // 3 processes and 4 threads, 3 rounds each of apply + release for their own VMs, all at once, starting from
  // a rule set without fcwarm's chains. The processes share this namespace (children inherit it).
  std::vector<util::Child> workers;
  for (int w = 0; w < 3; ++w) {
    util::SpawnOptions so;
    so.argv = {"/proc/self/exe", "--race-worker", "proc-" + std::to_string(w), std::to_string(w),
               lab.opts.lock_path};
    so.stdout_path = lab.opts.lock_path + ".worker" + std::to_string(w);
    auto c = util::Spawn(so);
    REQUIRE(c.ok());
    workers.push_back(*c);
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      if (RaceRounds("thread-" + std::to_string(t), 4 + t, lab.opts) != 0) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  for (size_t w = 0; w < workers.size(); ++w) {
    auto status = util::WaitFor(workers[w].pid, 120s);
    REQUIRE(status.has_value());
    auto text = util::ReadFile(lab.opts.lock_path + ".worker" + std::to_string(w));
    std::string out = text.ok() ? *text : "";
    CHECK_MESSAGE(WIFEXITED(*status), out);
    CHECK_MESSAGE(WEXITSTATUS(*status) == 0, out);
  }
  CHECK(failures == 0);
  std::string rules = RuleSet();
  auto count = [&](const std::string& s) {
    size_t n = 0;
    for (size_t p = rules.find(s); p != std::string::npos; p = rules.find(s, p + 1)) ++n;
    return n;
  };
  CHECK(count("-A FORWARD -j FCWARM-FORWARD\n") == 1);
  CHECK(count("-A INPUT -j FCWARM-INPUT\n") == 1);
  CHECK(count("-A PREROUTING -m addrtype --dst-type LOCAL -j FCWARM-DNAT\n") == 1);
  CHECK(count("-A OUTPUT -m addrtype --dst-type LOCAL -j FCWARM-DNAT\n") == 1);
  CHECK(count("-A POSTROUTING -j FCWARM-POSTROUTING\n") == 1);
  CHECK(count("fcwarm:vm:") == 0);

  // Rules of three VMs; only "c" still exists after a crash. The handles are dropped without release.
  auto a = ApplyEgress({"a", "fcwta", "10.213.2.2"}, lab.opts);
  auto b = PublishPorts({"b", "fcwtb", "10.213.2.6", *ParsePorts({"198.51.100.1:18080:80"})}, lab.opts);
  auto c = ApplyEgress({"c", "fcwtc", "10.213.2.10"}, lab.opts);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(c.ok());
  auto busy = RemoveBaseChains(lab.opts);
  CHECK(busy.code() == StatusCode::kFailedPrecondition);
  CHECK(busy.message().find("fcwarm:vm:") != std::string::npos);

  auto removed = SweepRules(lab.opts, {"c"});
  REQUIRE(removed.ok());
  CHECK(*removed == std::vector<std::string>{"a", "b"});
  CHECK(ListVmRules(lab.opts, "a")->empty());
  CHECK(ListVmRules(lab.opts, "b")->empty());
  CHECK(!ListVmRules(lab.opts, "c")->empty());
  CHECK((*a)->Release().ok());  // swept already: still Ok
  CHECK((*b)->Release().ok());
  CHECK((*c)->Release().ok());
  CHECK(SweepRules(lab.opts, {})->empty());
  REQUIRE(RemoveBaseChains(lab.opts).ok());
  CHECK(RuleSet() == pristine);
}

int main(int argc, char** argv) {
  // A racing process of the sweep test: already inside the test's namespace (inherited), so no unshare here.
  if (argc == 5 && std::strcmp(argv[1], "--race-worker") == 0) {
    IptablesOptions opts;
    opts.lock_path = argv[4];
    return RaceRounds(argv[2], std::atoi(argv[3]), opts);
  }
  // Before anything else (no thread and no child exists yet): a network namespace of our own. Children and
  // the spawn helper thread are created later and inherit it. Listing the test cases needs none of it.
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--list", 6) == 0 || std::strncmp(argv[i], "-l", 2) == 0) {
      return doctest::Context(argc, argv).run();
    }
  }
  if (::geteuid() != 0) {
    std::printf("SKIP: net_host_test needs root (network namespaces, iptables)\n");
    return 0;
  }
  if (::unshare(CLONE_NEWNET) != 0) {
    std::printf("SKIP: unshare(CLONE_NEWNET): %s\n", std::strerror(errno));
    return 0;
  }
  for (const char* prog : {"iptables-save", "iptables-restore", "ip"}) {
    if (!util::FindProgram(prog)) {
      std::fprintf(stderr, "net_host_test: %s not found (scripts/setup.sh installs iptables and iproute2)\n",
                   prog);
      return 1;
    }
  }
  auto lo = util::Run({"ip", "link", "set", "lo", "up"}, 10s);
  if (!lo.ok() || lo->exit_code != 0) {
    std::fprintf(stderr, "net_host_test: cannot bring lo up in the test namespace\n");
    return 1;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
