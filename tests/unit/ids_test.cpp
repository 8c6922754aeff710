#include <doctest/doctest.h>

#include <set>

#include "fcwarm/ids.hpp"

using namespace fcwarm;

TEST_CASE("generated ids are valid, distinct UUID v4 text") {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto id = Id::Generate();
    CHECK(Id::IsValid(id.str()));
    CHECK(id.str()[14] == '4');
    seen.insert(id.str());
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("malformed ids are refused with the field named") {
  const char* bad[] = {"", "..", "../etc/passwd", "a/b", "0B6C0C8E-54B3-4D1E-9F6A-3F0A4C7D2E11",
                       "0b6c0c8e-54b3-1d1e-9f6a-3f0a4c7d2e11",  // version 1
                       "0b6c0c8e-54b3-4d1e-cf6a-3f0a4c7d2e11",  // bad variant
                       "0b6c0c8e54b34d1e9f6a3f0a4c7d2e11", "0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e11/",
                       "%2e%2e"};
  for (const char* b : bad) {
    auto r = Id::Parse("snapshot_id", b);
    CHECK_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("snapshot_id") == 0);
  }
  std::string with_nul("0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e1\0", 36);
  auto r = Id::Parse("id", with_nul);
  CHECK_FALSE(r.ok());
  CHECK(r.status().message().find("\\x00") != std::string::npos);
  CHECK(Id::Parse("id", "0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e11").ok());
}

TEST_CASE("names are validated") {
  CHECK(ValidateName("name", "docker-runtime").ok());
  CHECK(ValidateName("name", "a.b_c-1").ok());
  for (const char* bad : {"", "..", "a/b", "../x", "-lead", "UPPER", "has space", "a..b", "x\n"}) {
    auto st = ValidateName("name", bad);
    CHECK_FALSE(st.ok());
    CHECK(st.message().find("name") == 0);
  }
  CHECK_FALSE(ValidateName("name", std::string(64, 'a')).ok());
}
