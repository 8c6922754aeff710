// The --coordination URL (coord/coordination_url.hpp) and the base64 the etcd gateway uses (util/base64.hpp).
#include "coord/coordination_url.hpp"

#include <doctest/doctest.h>

#include "util/base64.hpp"

using fcwarm::StatusCode;
using fcwarm::util::Base64Decode;
using fcwarm::util::Base64Encode;
using fcwarm::coord::EtcdEndpoint;
using fcwarm::coord::ParseCoordinationUrl;

namespace {

// The error message of a URL that must be refused.
std::string Refused(const std::string& url) {
  auto r = ParseCoordinationUrl(url);
  REQUIRE_MESSAGE(!r.ok(), url);
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

}  // namespace

TEST_CASE("coordination URL: one endpoint and the default prefix") {
  auto r = ParseCoordinationUrl("etcd://127.0.0.1:2379");
  REQUIRE(r.ok());
  REQUIRE(r->endpoints.size() == 1);
  CHECK(r->endpoints[0].host == "127.0.0.1");
  CHECK(r->endpoints[0].port == 2379);
  CHECK(r->endpoints[0].BaseUrl() == "http://127.0.0.1:2379");
  CHECK(r->key_prefix == "/fcwarm/");
  // A lone '/' is the default prefix too.
  auto slash = ParseCoordinationUrl("etcd://etcd.example:2379/");
  REQUIRE(slash.ok());
  CHECK(slash->key_prefix == "/fcwarm/");
  CHECK(slash->endpoints[0].host == "etcd.example");
}

TEST_CASE("coordination URL: several endpoints, IPv6 and a prefix") {
  auto r = ParseCoordinationUrl("etcd://a.example:2379,10.0.0.2:12379,[::1]:2379/prod/warm");
  REQUIRE(r.ok());
  REQUIRE(r->endpoints.size() == 3);
  CHECK(r->endpoints[0] == EtcdEndpoint{"a.example", 2379});
  CHECK(r->endpoints[1] == EtcdEndpoint{"10.0.0.2", 12379});
  CHECK(r->endpoints[2] == EtcdEndpoint{"::1", 2379});
  CHECK(r->endpoints[2].HostPort() == "[::1]:2379");
  CHECK(r->endpoints[2].BaseUrl() == "http://[::1]:2379");
  CHECK(r->key_prefix == "/prod/warm/");
  auto trailing = ParseCoordinationUrl("etcd://h:1/a_b.c-d/");
  REQUIRE(trailing.ok());
  CHECK(trailing->key_prefix == "/a_b.c-d/");
  CHECK(trailing->endpoints[0].port == 1);
}

TEST_CASE("coordination URL: bad scheme") {
  CHECK(Refused("http://127.0.0.1:2379").find("unsupported scheme 'http'") != std::string::npos);
  CHECK(Refused("ETCD://127.0.0.1:2379").find("unsupported scheme") != std::string::npos);
  CHECK(Refused("127.0.0.1:2379").find("expected etcd://") != std::string::npos);
  CHECK(Refused("").find("empty") != std::string::npos);
}

TEST_CASE("coordination URL: missing or bad port") {
  CHECK(Refused("etcd://127.0.0.1").find("missing port") != std::string::npos);
  CHECK(Refused("etcd://host:").find("missing port") != std::string::npos);
  CHECK(Refused("etcd://[::1]").find("missing port") != std::string::npos);
  CHECK(Refused("etcd://host:http").find("port 'http' is not a number") != std::string::npos);
  CHECK(Refused("etcd://host:0").find("out of range") != std::string::npos);
  CHECK(Refused("etcd://host:65536").find("out of range") != std::string::npos);
  CHECK(Refused("etcd://host:-1").find("not a number") != std::string::npos);
  CHECK(Refused("etcd://host:123456").find("not a number") != std::string::npos);
}

TEST_CASE("coordination URL: bad host") {
  CHECK(Refused("etcd://:2379").find("missing host") != std::string::npos);
  CHECK(Refused("etcd://bad_host:2379").find("'bad_host' is not a valid host name") != std::string::npos);
  CHECK(Refused("etcd://-a.example:2379").find("not a valid host name") != std::string::npos);
  CHECK(Refused("etcd://a..b:2379").find("not a valid host name") != std::string::npos);
  CHECK(Refused("etcd://300.1.1.1:2379").find("'300.1.1.1' is not an IPv4 address") != std::string::npos);
  CHECK(Refused("etcd://1.2.3:2379").find("not an IPv4 address") != std::string::npos);
  CHECK(Refused("etcd://::1:2379").find("must be in brackets") != std::string::npos);
  CHECK(Refused("etcd://[::g]:2379").find("not an IPv6 address") != std::string::npos);
  CHECK(Refused("etcd://[::1:2379").find("unterminated") != std::string::npos);
  CHECK(Refused("etcd://[::1]x:2379").find("after ']'") != std::string::npos);
}

TEST_CASE("coordination URL: endpoint lists") {
  CHECK(Refused("etcd://").find("no endpoint") != std::string::npos);
  CHECK(Refused("etcd:///fcwarm").find("no endpoint") != std::string::npos);
  CHECK(Refused("etcd://a:1,,b:2").find("endpoint '': empty") != std::string::npos);
  CHECK(Refused("etcd://a:1,").find("empty") != std::string::npos);
  CHECK(Refused("etcd://a:1,b").find("endpoint 'b': missing port") != std::string::npos);
  CHECK(Refused("etcd://a:1,a:1").find("a:1 is given twice") != std::string::npos);
}

TEST_CASE("coordination URL: prefix, credentials, query and spaces") {
  CHECK(Refused("etcd://a:1/x//y").find("empty segment") != std::string::npos);
  CHECK(Refused("etcd://a:1/x/../y").find("'..'") != std::string::npos);
  CHECK(Refused("etcd://a:1/./y").find("'..'") != std::string::npos);
  CHECK(Refused("etcd://a:1/x*y").find("character '*'") != std::string::npos);
  CHECK(Refused("etcd://user:pw@a:1").find("credentials") != std::string::npos);
  CHECK(Refused("etcd://a:1/x?y=1").find("query") != std::string::npos);
  CHECK(Refused("etcd://a:1/x#y").find("fragment") != std::string::npos);
  CHECK(Refused("etcd://a :1").find("space") != std::string::npos);
  // Every message names the URL it refers to.
  CHECK(Refused("etcd://a:1/x//y").find("'etcd://a:1/x//y'") != std::string::npos);
}

TEST_CASE("gateway base64 round-trips and refuses bad input") {
  CHECK(Base64Encode("") == "");
  CHECK(Base64Encode("f") == "Zg==");
  CHECK(Base64Encode("fo") == "Zm8=");
  CHECK(Base64Encode("foo") == "Zm9v");
  CHECK(Base64Encode("/fcwarm/locks/k") == "L2Zjd2FybS9sb2Nrcy9r");
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t n = 0; n <= all.size(); n += 37) {
    auto back = Base64Decode(Base64Encode(all.substr(0, n)));
    REQUIRE(back.has_value());
    CHECK(*back == all.substr(0, n));
  }
  CHECK(Base64Decode("Zm9v") == std::optional<std::string>("foo"));
  CHECK(Base64Decode("Zg==") == std::optional<std::string>("f"));
  CHECK_FALSE(Base64Decode("Zm9").has_value());       // not a multiple of 4
  CHECK_FALSE(Base64Decode("Z===").has_value());      // too much padding
  CHECK_FALSE(Base64Decode("Zg==Zm9v").has_value());  // padding before the end
  CHECK_FALSE(Base64Decode("Zm9!").has_value());      // not in the alphabet
  CHECK_FALSE(Base64Decode("Zm=v").has_value());      // data after padding
}
