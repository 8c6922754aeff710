// Pure parts of the host networking code: IPv4/CIDR parsing, the egress policy, Docker's port syntax, the
// rules that would be applied, and the trial bind() of CheckPortsFree on loopback. No root, no iptables.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "net/egress.hpp"
#include "net/iptables.hpp"
#include "net/ipv4.hpp"
#include "net/ports.hpp"

using namespace fcwarm;
using namespace fcwarm::net;

namespace {

bool Has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string Render(const NewRule& r) {
  std::string s = r.table + " " + r.chain;
  for (const auto& w : r.match) s += " " + w;
  s += " ->";
  for (const auto& w : r.target) s += " " + w;
  return s;
}

std::vector<std::string> RenderAll(const std::vector<NewRule>& rules) {
  std::vector<std::string> out;
  for (const auto& r : rules) out.push_back(Render(r));
  return out;
}

// A listening TCP socket on 127.0.0.1:<kernel-chosen port>; closed on destruction.
struct Listener {
  int fd = -1;
  uint16_t port = 0;
  explicit Listener(int type = SOCK_STREAM) {
    fd = ::socket(AF_INET, type, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    if (type == SOCK_STREAM) REQUIRE(::listen(fd, 1) == 0);
    socklen_t len = sizeof(sa);
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    port = ntohs(sa.sin_port);
  }
  ~Listener() { ::close(fd); }
};

}  // namespace

TEST_CASE("IPv4 addresses and CIDR blocks parse strictly") {
  CHECK(ParseIpv4("10.213.0.22") == 0x0ad50016u);
  CHECK(ParseIpv4("0.0.0.0") == 0u);
  CHECK(ParseIpv4("255.255.255.255") == 0xffffffffu);
  for (const char* bad : {"", "10.213.0", "10.213.0.22.1", "256.1.1.1", "010.1.1.1", "1.2.3.4 ", " 1.2.3.4",
                          "a.b.c.d", "1..2.3", "1.2.3.-4", "1.2.3.4/"}) {
    CHECK_MESSAGE(!ParseIpv4(bad), bad);
  }
  CHECK(FormatIpv4(0x0ad50016u) == "10.213.0.22");

  auto c = ParseCidr("10.213.0.0/16", "f");
  REQUIRE(c.ok());
  CHECK(c->ToString() == "10.213.0.0/16");
  CHECK(c->Contains(*ParseIpv4("10.213.255.1")));
  CHECK(!c->Contains(*ParseIpv4("10.214.0.1")));
  CHECK(ParseCidr("192.0.2.7", "f")->ToString() == "192.0.2.7/32");
  CHECK(ParseCidr("0.0.0.0/0", "f")->Contains(0xdeadbeefu));
  CHECK(c->Overlaps(*ParseCidr("10.0.0.0/8", "f")));
  CHECK(!c->Overlaps(*ParseCidr("10.214.0.0/16", "f")));

  auto host_bits = ParseCidr("10.0.0.1/8", "allow[2]");
  CHECK(host_bits.status().code() == StatusCode::kInvalidArgument);
  CHECK(Has(host_bits.status().message(), "allow[2]"));
  CHECK(Has(host_bits.status().message(), "did you mean 10.0.0.0/8"));
  for (const char* bad : {"10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/08", "10.0.0.0/8/8", "x/8"}) {
    CHECK_MESSAGE(!ParseCidr(bad, "f").ok(), bad);
  }

  CHECK(AddressPoolCidr("10.213.0.0", 16384)->ToString() == "10.213.0.0/16");
  CHECK(AddressPoolCidr("10.213.0.0", 1)->ToString() == "10.213.0.0/30");
  CHECK(AddressPoolCidr("10.213.0.0", 3)->ToString() == "10.213.0.0/28");
  CHECK(AddressPoolCidr("10.213.0.4", 2)->ToString() == "10.213.0.0/28");  // 10.213.0.4-11 straddles a /29
  CHECK(!AddressPoolCidr("10.213.0", 4).ok());
  CHECK(!AddressPoolCidr("255.255.255.0", 1024).ok());
}

TEST_CASE("egress policy: all, none or a CIDR list, errors name the entry") {
  CHECK(ParseEgressPolicy("all")->mode == EgressPolicy::Mode::kAll);
  CHECK(ParseEgressPolicy(" ALL ")->mode == EgressPolicy::Mode::kAll);
  CHECK(ParseEgressPolicy("none")->mode == EgressPolicy::Mode::kNone);
  auto list = ParseEgressPolicy("10.0.0.0/8, 192.0.2.7 ,10.0.0.0/8");
  REQUIRE(list.ok());
  CHECK(list->mode == EgressPolicy::Mode::kList);
  CHECK(list->ToString() == "10.0.0.0/8,192.0.2.7/32");  // deduplicated, order kept

  auto empty = ParseEgressPolicy("  ");
  CHECK(empty.status().code() == StatusCode::kInvalidArgument);
  CHECK(Has(empty.status().message(), "egress: empty"));
  auto trailing = ParseEgressPolicy("10.0.0.0/8,", "--egress");
  CHECK(Has(trailing.status().message(), "--egress entry 2: empty"));
  auto mixed = ParseEgressPolicy("all,10.0.0.0/8");
  CHECK(Has(mixed.status().message(), "entry 1: 'all' cannot be combined"));
  auto bad = ParseEgressPolicy("10.0.0.0/8,internet");
  CHECK(Has(bad.status().message(), "entry 2: 'internet' is not an IPv4 address"));
  CHECK(Has(bad.status().message(), "all, none or CIDR"));
  CHECK(!ParseEgressPolicy(std::string(5000, '1')).ok());
}

TEST_CASE("egress rules: the host closed, other VMs and link-local never, private ranges only when allowed") {
  EgressRequest req;
  req.vm_id = "vm-1";
  req.host_veth = "fcwh0123456789";
  req.guest_ip = "10.213.0.22";
  req.never = {"10.213.0.0/16"};
  req.allow = {"10.99.0.7"};
  req.dns_servers = {"10.255.255.53"};
  IptablesOptions opts;
  auto rules = BuildEgressRules(req, opts);
  REQUIRE(rules.ok());
  auto r = RenderAll(*rules);
  auto pos = [&](const std::string& s) {
    auto it = std::find(r.begin(), r.end(), s);
    INFO(s);
    REQUIRE(it != r.end());
    return it - r.begin();
  };
  const std::string v = "-i fcwh0123456789";
  // INPUT: replies, then everything rejected.
  CHECK(pos("filter FCWARM-INPUT " + v + " -m conntrack --ctstate RELATED,ESTABLISHED -> ACCEPT") <
        pos("filter FCWARM-INPUT " + v + " -> REJECT --reject-with icmp-admin-prohibited"));
  auto spoof =
      pos("filter FCWARM-EGRESS " + v + " ! -s 10.213.0.22/32 -> REJECT --reject-with icmp-admin-prohibited");
  auto pool =
      pos("filter FCWARM-EGRESS " + v + " -d 10.213.0.0/16 -> REJECT --reject-with icmp-admin-prohibited");
  auto meta =
      pos("filter FCWARM-EGRESS " + v + " -d 169.254.0.0/16 -> REJECT --reject-with icmp-admin-prohibited");
  auto dns = pos("filter FCWARM-EGRESS " + v + " -d 10.255.255.53/32 -p udp -m udp --dport 53 -> ACCEPT");
  auto allow = pos("filter FCWARM-EGRESS " + v + " -d 10.99.0.7/32 -> ACCEPT");
  auto priv =
      pos("filter FCWARM-EGRESS " + v + " -d 10.0.0.0/8 -> REJECT --reject-with icmp-admin-prohibited");
  auto all = pos("filter FCWARM-EGRESS " + v + " -> ACCEPT");
  auto last = pos("filter FCWARM-EGRESS " + v + " -> REJECT --reject-with icmp-admin-prohibited");
  CHECK(spoof < pool);
  CHECK(pool < dns);
  CHECK(meta < allow);
  CHECK(dns < allow);
  CHECK(allow < priv);
  CHECK(priv < all);
  CHECK(all < last);
  pos("filter FCWARM-EGRESS -o fcwh0123456789 -m conntrack --ctstate RELATED,ESTABLISHED -> ACCEPT");
  pos("filter FCWARM-EGRESS -o fcwh0123456789 -> REJECT --reject-with icmp-admin-prohibited");
  pos("nat FCWARM-POSTROUTING -s 10.213.0.22/32 ! -o fcwh0123456789 -> MASQUERADE");

  // none: no blanket accept and no private-range list; a CIDR list: its blocks accepted.
  req.policy = *ParseEgressPolicy("none");
  r = RenderAll(*BuildEgressRules(req, opts));
  CHECK(std::count(r.begin(), r.end(), "filter FCWARM-EGRESS " + v + " -> ACCEPT") == 0);
  CHECK(std::count(r.begin(), r.end(),
                   "filter FCWARM-EGRESS " + v +
                       " -d 10.0.0.0/8 -> REJECT --reject-with icmp-admin-prohibited") == 0);
  CHECK(std::count(r.begin(), r.end(), "filter FCWARM-EGRESS " + v + " -d 10.99.0.7/32 -> ACCEPT") == 1);
  req.policy = *ParseEgressPolicy("198.51.100.0/24");
  r = RenderAll(*BuildEgressRules(req, opts));
  CHECK(std::count(r.begin(), r.end(), "filter FCWARM-EGRESS " + v + " -d 198.51.100.0/24 -> ACCEPT") == 1);
  CHECK(std::count(r.begin(), r.end(), "filter FCWARM-EGRESS " + v + " -> ACCEPT") == 0);

  // Bad fields are named.
  auto bad = req;
  bad.vm_id = "vm 1";
  CHECK(Has(BuildEgressRules(bad, opts).status().message(), "vm_id"));
  bad = req;
  bad.host_veth = "a-name-longer-than-15";
  CHECK(Has(BuildEgressRules(bad, opts).status().message(), "host_veth"));
  bad = req;
  bad.guest_ip = "10.213.0.22/30";
  CHECK(Has(BuildEgressRules(bad, opts).status().message(), "guest_ip"));
  bad = req;
  bad.allow = {"10.99.0.7", "mirror.local"};
  CHECK(Has(BuildEgressRules(bad, opts).status().message(), "allow[1]"));
  bad = req;
  bad.dns_servers = {"127.0.0.53"};
  CHECK(Has(BuildEgressRules(bad, opts).status().message(), "dns_servers[0]: 127.0.0.53 is in 127.0.0.0/8"));
  bad = req;
  bad.dns_servers = {"10.213.0.1"};  // inside the pool: another VM's gateway
  CHECK(Has(BuildEgressRules(bad, opts).status().message(), "10.213.0.0/16"));
}

TEST_CASE("resolvers for guests leave loopback resolvers out") {
  CHECK(ResolversFromResolvConf("# comment\nnameserver 127.0.0.53\noptions edns0\n").empty());
  CHECK(ResolversFromResolvConf("nameserver 10.255.255.53\nnameserver 1.1.1.1\nnameserver 10.255.255.53\n"
                                "nameserver ::1\nnameserver 2001:db8::1\nsearch example\n") ==
        std::vector<std::string>{"10.255.255.53", "1.1.1.1"});
}

TEST_CASE("port specs in Docker's syntax") {
  auto p = ParsePorts(
      {"8080:80", "127.0.0.1:8443:443/tcp", "5353:53/udp", "0.0.0.0:9000:9000/UDP", "80", "127.0.0.2::81"});
  REQUIRE(p.ok());
  REQUIRE(p->size() == 6);
  CHECK((*p)[0].ToString() == "127.0.0.1:8080:80/tcp");  // default bind address
  CHECK((*p)[1].ToString() == "127.0.0.1:8443:443/tcp");
  CHECK((*p)[2].ToString() == "127.0.0.1:5353:53/udp");
  CHECK((*p)[3].ToString() == "0.0.0.0:9000:9000/udp");
  CHECK((*p)[4].host_port == 0);  // chosen later, as Docker does
  CHECK((*p)[4].container_port == 80);
  CHECK((*p)[5].ToString() == "127.0.0.2::81/tcp");
  CHECK(ParsePort("8080:80", "0.0.0.0")->host_ip == "0.0.0.0");
  CHECK(ParsePort(":80")->host_port == 0);

  struct Bad {
    const char* spec;
    const char* message;
  };
  for (const Bad& b : std::initializer_list<Bad>{
           {"0:80", "host port 0 is out of range (1-65535)"},
           {"8080:0", "container port 0 is out of range"},
           {"70000:80", "host port 70000 is out of range"},
           {"8080:99999", "container port 99999 is out of range"},
           {"8080:80/sctp", "protocol 'sctp' is not supported"},
           {"8080:80/", "protocol '' is not supported"},
           {"8000-8010:80", "port ranges are not supported"},
           {"http:80", "host port 'http' is not a number"},
           {"8080:", "container port is empty"},
           {"", "empty port spec"},
           {"[::1]:8080:80", "IPv6 addresses are not supported"},
           {"::1:8080:80", "too many ':'"},
           {"300.1.1.1:8080:80", "host address '300.1.1.1' is not an IPv4 address"},
           {":8080:80", "empty host address"},
           {"8080:80 ", "space or control character"},
           {"80\n", "space or control character"},
       }) {
    auto r = ParsePorts({"8080:81", b.spec});
    INFO(b.spec);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_MESSAGE(Has(r.status().message(), b.message), r.status().message());
    CHECK(Has(r.status().message(), "ports[1]"));
  }
  auto huge = ParsePorts({std::string(10240, '8')});
  CHECK(Has(huge.status().message(), "ports[0]"));
  CHECK(Has(huge.status().message(), "too long"));
  CHECK(huge.status().message().size() < 200);

  // Duplicates: same address, port and protocol; 0.0.0.0 overlaps every address. Another protocol is fine.
  auto dup = ParsePorts({"8080:80", "8081:81", "127.0.0.1:8080:90"});
  CHECK(dup.status().code() == StatusCode::kInvalidArgument);
  CHECK(Has(dup.status().message(), "ports[2]"));
  CHECK(Has(dup.status().message(), "ports[0] '8080:80'"));
  CHECK(!ParsePorts({"0.0.0.0:8080:80", "127.0.0.1:8080:80"}).ok());
  CHECK(ParsePorts({"8080:80/tcp", "8080:80/udp"}).ok());
  CHECK(ParsePorts({"127.0.0.1:8080:80", "127.0.0.2:8080:80"}).ok());
  CHECK(ParsePorts({"80", "80"}).ok());  // both get their own host port
}

TEST_CASE("CheckPortsFree: in use, published by fcwarm, or not an address of this host") {
  Listener busy;
  auto ports = *ParsePorts({std::to_string(busy.port) + ":80"});
  auto st = CheckPortsFree(ports, {});
  CHECK(st.code() == StatusCode::kFailedPrecondition);  // HTTP 409
  CHECK(Has(st.message(), "127.0.0.1:" + std::to_string(busy.port) + "/tcp is in use"));
  // The same port over UDP is free, and so is 0.0.0.0 for UDP.
  CHECK(CheckPortsFree(*ParsePorts({std::to_string(busy.port) + ":80/udp"}), {}).ok());

  Listener busy_udp(SOCK_DGRAM);
  auto udp = CheckPortsFree(*ParsePorts({"0.0.0.0:" + std::to_string(busy_udp.port) + ":53/udp"}), {});
  CHECK(udp.code() == StatusCode::kFailedPrecondition);

  // A port fcwarm published is not bound by anyone (DNAT), so only the published list tells.
  int free_port = 0;
  {
    Listener l;
    free_port = l.port;
  }
  auto mine = *ParsePorts({std::to_string(free_port) + ":80"});
  CHECK(CheckPortsFree(mine, {}).ok());
  auto published = *ParsePorts({"0.0.0.0:" + std::to_string(free_port) + ":8080"});
  auto again = CheckPortsFree(mine, published);
  CHECK(again.code() == StatusCode::kFailedPrecondition);
  CHECK(Has(again.message(), "already published by fcwarm (as 0.0.0.0:" + std::to_string(free_port)));

  auto foreign = CheckPortsFree(*ParsePorts({"192.0.2.250:8080:80"}), {});
  CHECK(foreign.code() == StatusCode::kInvalidArgument);
  CHECK(Has(foreign.message(), "192.0.2.250 is not an address of this host"));
}

TEST_CASE("AssignHostPorts picks free ports for container-port-only specs") {
  auto ports = *ParsePorts({"80", "80/udp", "127.0.0.1::443"});
  REQUIRE(AssignHostPorts(&ports, {}).ok());
  for (const auto& p : ports) {
    CHECK(p.host_port != 0);
    CHECK(p.host_ip == "127.0.0.1");
  }
  CHECK(ports[0].host_port != ports[2].host_port);
  CHECK(CheckPortsFree(ports, {}).ok());
}

TEST_CASE("published-port rules: DNAT, FORWARD accept, and 127.0.0.1 handling") {
  PublishRequest req;
  req.vm_id = "vm-1";
  req.host_veth = "fcwh0123456789";
  req.guest_ip = "10.213.0.22";
  req.ports = *ParsePorts({"8080:80", "0.0.0.0:5353:53/udp", "8081:80"});
  IptablesOptions opts;
  auto r = RenderAll(*BuildPortRules(req, opts));
  auto count = [&](const std::string& s) { return std::count(r.begin(), r.end(), s); };
  CHECK(count("nat FCWARM-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -> DNAT --to-destination "
              "10.213.0.22:80") == 1);
  CHECK(count("nat FCWARM-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -> DNAT --to-destination "
              "10.213.0.22:80") == 1);
  CHECK(count("nat FCWARM-DNAT -p udp -m udp --dport 5353 -> DNAT --to-destination 10.213.0.22:53") == 1);
  // One FORWARD pair per container port, however many host ports lead to it.
  CHECK(count("filter FCWARM-PORTS -o fcwh0123456789 -d 10.213.0.22/32 -p tcp -m tcp --dport 80 -m conntrack "
              "--ctstate DNAT -> ACCEPT") == 1);
  CHECK(count("filter FCWARM-PORTS -i fcwh0123456789 -s 10.213.0.22/32 -p tcp -m tcp --sport 80 -m conntrack "
              "--ctstate RELATED,ESTABLISHED -> ACCEPT") == 1);
  CHECK(count("filter FCWARM-PORTS -o fcwh0123456789 -d 10.213.0.22/32 -p udp -m udp --dport 53 -m conntrack "
              "--ctstate DNAT -> ACCEPT") == 1);
  CHECK(count("nat FCWARM-POSTROUTING -s 127.0.0.0/8 -o fcwh0123456789 -> MASQUERADE") == 1);
  CHECK(
      count(
          "filter FCWARM-INPUT -i fcwh0123456789 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED "
          "-> DROP") == 1);
  CHECK(r.size() == 9);

  // Only a non-loopback address: no loopback rules.
  req.ports = *ParsePorts({"8080:80"}, "192.0.2.2");
  r = RenderAll(*BuildPortRules(req, opts));
  CHECK(count("nat FCWARM-POSTROUTING -s 127.0.0.0/8 -o fcwh0123456789 -> MASQUERADE") == 0);
  CHECK(r.size() == 3);

  req.ports = *ParsePorts({"80"});
  CHECK(Has(BuildPortRules(req, opts).status().message(), "ports[0]: '127.0.0.1::80/tcp' has no host port"));
  req.ports = *ParsePorts({"8080:80"});
  req.ports.push_back(req.ports[0]);
  CHECK(Has(BuildPortRules(req, opts).status().message(), "ports[1]"));
}

TEST_CASE("iptables-save output: rules, counters, quoted and bare comments, truncation refused") {
  const std::string text =
      "# Generated by iptables-save v1.8.9 (nf_tables)\n"
      "*mangle\n:PREROUTING ACCEPT [0:0]\n[1:2] -A PREROUTING -j MARK --set-mark 1\nCOMMIT\n"
      "*filter\n:INPUT ACCEPT [10:20]\n:FCWARM-INPUT - [0:0]\n"
      "[3:180] -A INPUT -j FCWARM-INPUT\n"
      "[7:420] -A FCWARM-INPUT -i fcwh01 -m comment --comment \"fcwarm:vm:a:egress:0badf00d\" -j REJECT "
      "--reject-with icmp-admin-prohibited\n"
      "[0:0] -A FCWARM-INPUT -i fcwh02 -m comment --comment fcwarm:vm:b:ports:12345678 -j DROP\n"
      "[0:0] -A FCWARM-INPUT -m comment --comment \"say \\\"hi\\\"\" -j ACCEPT\n"
      "COMMIT\n# Completed\n"
      "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j FCWARM-POSTROUTING\nCOMMIT\n";
  auto rules = ParseIptablesSave(text);
  REQUIRE_MESSAGE(rules.ok(), rules.status().ToString());
  REQUIRE(rules->size() == 5);  // mangle skipped
  CHECK((*rules)[0].table == "filter");
  CHECK((*rules)[0].chain == "INPUT");
  CHECK((*rules)[0].spec == "-j FCWARM-INPUT");
  CHECK((*rules)[0].packets == 3);
  CHECK((*rules)[0].bytes == 180);
  CHECK((*rules)[1].comment == "fcwarm:vm:a:egress:0badf00d");
  CHECK((*rules)[1].packets == 7);
  CHECK((*rules)[2].comment == "fcwarm:vm:b:ports:12345678");  // legacy iptables-save: unquoted
  CHECK((*rules)[3].comment == "say \"hi\"");
  CHECK((*rules)[4].table == "nat");
  CHECK((*rules)[4].packets == 0);  // without -c

  auto truncated = ParseIptablesSave(text.substr(0, text.find("COMMIT\n# Completed")));
  CHECK(truncated.status().code() == StatusCode::kInternal);
  CHECK(truncated.status().message().find("no COMMIT") != std::string::npos);
  CHECK(!ParseIptablesSave("*filter\ngarbage\nCOMMIT\n").ok());
}

TEST_CASE("rule tags: family per VM and kind, names checked") {
  IptablesOptions opts;
  CHECK(RuleTag(opts, "vm-1", RuleKind::kEgress) == "fcwarm:vm:vm-1:egress");
  CHECK(RuleTag(opts, "vm-1", RuleKind::kPorts) == "fcwarm:vm:vm-1:ports");
  CHECK(ChainName(opts, "FORWARD") == "FCWARM-FORWARD");
  CHECK(ValidateVmId("0f3c-9a.b_c").ok());
  CHECK(!ValidateVmId("a:b").ok());  // ':' separates the tag's parts
  CHECK(!ValidateVmId("").ok());
  CHECK(!ValidateVmId(std::string(65, 'a')).ok());
  CHECK(!ValidateInterface("eth0 -j ACCEPT", "host_veth").ok());
  CHECK(ValidateInterface("fcwh0123456789", "host_veth").ok());
}
