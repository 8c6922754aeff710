// Unit tests of the server's building blocks (no sockets): request parser, target decoding, routing, codec.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <deque>
#include <string>

#include "api.hpp"
#include "codec.hpp"
#include "request_parser.hpp"
#include "router.hpp"

using namespace fcwarm;
using namespace fcwarm::server;

TEST_CASE("parser: pipelined requests byte by byte") {
  std::string wire =
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /b HTTP/1.1\r\nContent-Length: 3\r\nX-Y:  v \r\n\r\nabc"
      "GET /c HTTP/1.0\r\n\r\n";
  RequestParser p({});
  std::deque<HttpRequest> out;
  for (char c : wire) REQUIRE(p.Feed(&c, 1, out));
  REQUIRE(out.size() == 3);
  CHECK(out[0].method == "GET");
  CHECK(out[0].target == "/a");
  CHECK(out[0].keep_alive);
  CHECK(out[1].body == "abc");
  CHECK(*out[1].Header("x-y") == "v");
  CHECK_FALSE(out[2].keep_alive);
  CHECK_FALSE(p.in_progress());
}

TEST_CASE("parser: limits map to statuses") {
  ParserLimits l;
  l.max_url_bytes = 10;
  l.max_header_bytes = 20;
  l.max_body_bytes = 5;
  std::deque<HttpRequest> out;
  {
    RequestParser p(l);
    std::string w = "GET /0123456789abc HTTP/1.1\r\n\r\n";
    CHECK_FALSE(p.Feed(w.data(), w.size(), out));
    CHECK(p.error_status() == 414);
  }
  {
    RequestParser p(l);
    std::string w = "GET / HTTP/1.1\r\nX: 0123456789012345678901\r\n\r\n";
    CHECK_FALSE(p.Feed(w.data(), w.size(), out));
    CHECK(p.error_status() == 431);
  }
  {
    RequestParser p(l);
    std::string w = "POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\n";
    CHECK_FALSE(p.Feed(w.data(), w.size(), out));
    CHECK(p.error_status() == 413);
  }
  {
    ParserLimits body_only;
    body_only.max_body_bytes = 5;
    RequestParser p(body_only);
    std::string w =
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n4\r\nefgh\r\n0\r\n\r\n";
    CHECK_FALSE(p.Feed(w.data(), w.size(), out));
    CHECK(p.error_status() == 413);
  }
  {
    RequestParser p(l);
    std::string w = "GET / HTTP/2.0\r\n\r\n";
    CHECK_FALSE(p.Feed(w.data(), w.size(), out));
    CHECK(p.error_status() == 505);
  }
  {
    RequestParser p({});
    std::string w = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK_FALSE(p.Feed(w.data(), w.size(), out));
    CHECK(p.error_status() == 400);
  }
  {
    RequestParser p({});
    std::string w = "GET / HTTP/1.1\r\nHost: x\r\n";
    CHECK(p.Feed(w.data(), w.size(), out));
    CHECK(p.in_progress());
    CHECK_FALSE(p.FeedEof(out));
  }
}

TEST_CASE("target decoding") {
  auto t = ParseTarget("/v1/images/a%2Db?x=1&y=a+b%21&z");
  REQUIRE(t.ok());
  CHECK(t->segments == std::vector<std::string>{"v1", "images", "a-b"});
  CHECK(t->query.at("x") == "1");
  CHECK(t->query.at("y") == "a b!");
  CHECK(t->query.at("z").empty());
  CHECK(ParseTarget("/v1/images/").ok());
  for (const char* bad : {"/v1/images/..", "/v1/%2e%2e/x", "/v1/a%2fb", "/v1/a%00", "/v1//a", "/v1/%zz",
                          "/v1/%4", "v1/images", "/v1/a%5cb", "/v1?x=1&x=2", "/v1?%00=1", "/v1?=1"}) {
    CAPTURE(bad);
    auto r = ParseTarget(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("routing") {
  auto m = MatchRoute("GET", {"v1", "runtime-snapshots", "x"});
  CHECK(m.kind == RouteMatch::Kind::kFound);
  CHECK(m.route == RouteId::kSnapshot);
  CHECK(m.params == std::vector<std::string>{"x"});
  m = MatchRoute("PUT", {"v1", "images"});
  CHECK(m.kind == RouteMatch::Kind::kMethodNotAllowed);
  CHECK(m.allow == "GET, POST");
  CHECK(MatchRoute("GET", {"v1", "nothing"}).kind == RouteMatch::Kind::kNotFound);
  CHECK_FALSE(MatchRoute("GET", {"healthz"}).requires_auth);
  CHECK(MatchRoute("GET", {"metrics"}).requires_auth);
}

TEST_CASE("token comparison") {
  CHECK(Api::TokenMatches("abcdefghijklmnop", "abcdefghijklmnop"));
  CHECK_FALSE(Api::TokenMatches("abcdefghijklmnoq", "abcdefghijklmnop"));
  CHECK_FALSE(Api::TokenMatches("abcdefghijklmno", "abcdefghijklmnop"));
  CHECK_FALSE(Api::TokenMatches("abcdefghijklmnopq", "abcdefghijklmnop"));
  CHECK_FALSE(Api::TokenMatches("", "abcdefghijklmnop"));
}

TEST_CASE("status mapping and strict object reader") {
  CHECK(HttpStatusFor(StatusCode::kInvalidArgument) == 400);
  CHECK(HttpStatusFor(StatusCode::kNotFound) == 404);
  CHECK(HttpStatusFor(StatusCode::kAlreadyExists) == 409);
  CHECK(HttpStatusFor(StatusCode::kFailedPrecondition) == 409);
  CHECK(HttpStatusFor(StatusCode::kResourceExhausted) == 429);
  CHECK(HttpStatusFor(StatusCode::kUnavailable) == 503);
  CHECK(HttpStatusFor(StatusCode::kDeadlineExceeded) == 504);
  CHECK(HttpStatusFor(StatusCode::kInternal) == 500);
  // A full file system is 507; other exhausted resources (limits, queues) stay 429.
  CHECK(HttpStatusOf(Status::ResourceExhausted("write /d/x: No space left on device")) == 507);
  CHECK(HttpStatusOf(Status::ResourceExhausted("database '/d/fcwarm.db': database or disk is full")) == 507);
  CHECK(HttpStatusOf(Status::ResourceExhausted("write /d/x: Disk quota exceeded")) == 507);
  CHECK(HttpStatusOf(Status::ResourceExhausted("the maximum of 3 runtime snapshots is reached")) == 429);
  CHECK(HttpStatusOf(Status::Unavailable("write /d/x: No space left on device")) == 503);
  CHECK(HttpStatusOf(Status::NotFound("x")) == 404);

  auto o = ParseBodyObject(R"({"a": "x", "n": 3, "extra": 1})");
  REQUIRE(o.ok());
  ObjectReader r(*o);
  std::string a;
  uint32_t n = 0;
  r.RequiredString("a", &a);
  r.OptionalUint32("n", &n, 1, 5);
  auto st = r.Finish();
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(st.message().rfind("extra: unknown field", 0) == 0);
  CHECK(a == "x");
  CHECK(n == 3);
  CHECK_FALSE(ParseBodyObject("[]").ok());
  CHECK_FALSE(ParseBodyObject(std::string(100, '[') + std::string(100, ']')).ok());
}
