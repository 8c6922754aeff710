// ParseImageReference: Docker's reference grammar, and errors that name the field and the problem.
#include <doctest/doctest.h>

#include "fcwarm/image_reference.hpp"
#include "fcwarm/time_format.hpp"

using namespace fcwarm;

namespace {
std::string ErrorOf(std::string_view text, std::string_view field = "image") {
  auto r = ParseImageReference(text, field);
  if (r.ok()) return "";
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}
}  // namespace

TEST_CASE("image references: the forms Docker accepts, split and normalized") {
  auto r = ParseImageReference("nginx:alpine");
  REQUIRE(r.ok());
  CHECK(r->domain.empty());
  CHECK(r->path == "nginx");
  CHECK(r->tag == "alpine");
  CHECK(r->str() == "nginx:alpine");
  CHECK(r->Normalized() == "docker.io/library/nginx:alpine");

  auto b = ParseImageReference("busybox");
  REQUIRE(b.ok());
  CHECK(b->Normalized() == "docker.io/library/busybox:latest");

  auto full = ParseImageReference("registry.local:5000/team/my-app__x.y:v1.2-rc_3");
  REQUIRE(full.ok());
  CHECK(full->domain == "registry.local:5000");
  CHECK(full->path == "team/my-app__x.y");
  CHECK(full->tag == "v1.2-rc_3");
  CHECK(full->Normalized() == "registry.local:5000/team/my-app__x.y:v1.2-rc_3");

  auto local = ParseImageReference("localhost/app");
  REQUIRE(local.ok());
  CHECK(local->domain == "localhost");

  auto hub = ParseImageReference("library/nginx");  // no '.' or ':' in "library": a path, not a registry
  REQUIRE(hub.ok());
  CHECK(hub->domain.empty());
  CHECK(hub->Normalized() == "docker.io/library/nginx:latest");

  const std::string hex(64, 'a');
  auto d = ParseImageReference("10.214.0.2:5000/library/nginx:alpine@sha256:" + hex);
  REQUIRE(d.ok());
  CHECK(d->domain == "10.214.0.2:5000");
  CHECK(d->tag == "alpine");
  CHECK(d->digest == "sha256:" + hex);
  CHECK(d->Normalized() == "10.214.0.2:5000/library/nginx:alpine@sha256:" + hex);
  CHECK(ParseImageReference("a-----b:" + std::string(128, 't')).ok());
}

TEST_CASE("image references: bad input is refused with the field and the reason") {
  CHECK(ErrorOf("").find("image: is required") == 0);
  CHECK(ErrorOf("Nginx:alpine").find("lower case") != std::string::npos);
  CHECK(ErrorOf("nginx/Alpine").find("lower case") != std::string::npos);
  CHECK(ErrorOf("../etc/passwd").find("not a valid image reference") != std::string::npos);
  CHECK(ErrorOf("a/../b").find("must start and end") != std::string::npos);
  CHECK(ErrorOf("a..b").find("not a separator") != std::string::npos);
  CHECK(ErrorOf("/abs").find("empty path component") != std::string::npos);
  CHECK(ErrorOf("a//b").find("empty path component") != std::string::npos);
  CHECK(ErrorOf("-rf").find("must start and end") != std::string::npos);
  CHECK(ErrorOf("a b").find("space") != std::string::npos);
  CHECK(ErrorOf(std::string("a\nb")).find("non-printable") != std::string::npos);
  CHECK(ErrorOf("nginx:").find("tag") != std::string::npos);
  CHECK(ErrorOf("nginx:.x").find("tag must start") != std::string::npos);
  CHECK(ErrorOf("nginx:" + std::string(129, 't')).find("128") != std::string::npos);
  CHECK(ErrorOf("nginx@sha256:abc").find("64 hex digits, not 3") != std::string::npos);
  CHECK(ErrorOf("nginx@sha256:" + std::string(65, 'a')).find("not 65") != std::string::npos);
  CHECK(ErrorOf("nginx@sha256:" + std::string(64, 'A')).find("lower-case hex") != std::string::npos);
  CHECK(ErrorOf("nginx@md5:" + std::string(32, 'a')).find("not sha256") != std::string::npos);
  CHECK(ErrorOf("reg:99999/app").find("out of range") != std::string::npos);
  CHECK(ErrorOf("reg:x1/app:1").find("not a number") != std::string::npos);
  CHECK(ErrorOf("a/" + std::string(300, 'b')).find("longer than 255") != std::string::npos);
  std::string huge(10 * 1024, 'a');
  auto msg = ErrorOf(huge, "preload_images[1]");
  CHECK(msg.find("preload_images[1]: 10240 characters is too long") == 0);
  CHECK(msg.size() < 200);  // the error never echoes the whole input
}

TEST_CASE("RFC 3339 times: whole seconds in UTC, parsed back with offsets and fractions") {
  CHECK(FormatRfc3339(0) == "1970-01-01T00:00:00Z");
  CHECK(FormatRfc3339(1769508000123) == "2026-01-27T10:00:00Z");
  CHECK(FormatRfc3339(951782400000) == "2000-02-29T00:00:00Z");  // leap day
  CHECK(ParseRfc3339("2026-01-27T10:00:00Z", "t").value() == 1769508000000);
  CHECK(ParseRfc3339("2026-01-27T10:00:00.5Z", "t").value() == 1769508000500);
  CHECK(ParseRfc3339("2026-01-27T11:30:00+01:30", "t").value() == 1769508000000);
  CHECK(ParseRfc3339(FormatRfc3339(1769508000999), "t").value() == 1769508000000);
  for (const char* bad : {"", "2026-01-27", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-27T10:00:00",
                          "2026-01-27T10:00:00Zjunk", "2026-01-27 10:00:00Z", "2026-01-27T25:00:00Z"}) {
    auto r = ParseRfc3339(bad, "since");
    CHECK_FALSE(r.ok());
    CHECK(r.status().message().find("since:") == 0);
  }
}
