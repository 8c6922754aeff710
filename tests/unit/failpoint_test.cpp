// The failpoint mechanism (src/util/failpoint.hpp) and its one registry: kFailpoints, the table of
// docs/failpoints.md and the names the sources use must be the same set.
#include "util/failpoint.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

using namespace fcwarm;
namespace fs = std::filesystem;

namespace {

std::string Slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::set<std::string> Registry() {
  std::set<std::string> out;
  for (const auto& f : failpoint::kFailpoints) out.insert(std::string(f.name));
  return out;
}

// The first column of docs/failpoints.md's table: rows "| `name` | ...".
std::set<std::string> Documented() {
  std::set<std::string> out;
  std::istringstream in(Slurp(fs::path(FCWARM_SOURCE_DIR) / "docs" / "failpoints.md"));
  static const std::regex kRow(R"(^\| `([^`]+)` \|)");
  std::string line;
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, kRow)) out.insert(m[1]);
  }
  return out;
}

// Every FCWARM_FAILPOINT("..."), FCWARM_FAILPOINT_INTO("...", ...) and FCWARM_FAILPOINT_CHECK("...") in src/
// and server/src/.
std::set<std::string> UsedInSources(std::multiset<std::string>* all = nullptr) {
  std::set<std::string> out;
  static const std::regex kUse(R"re(FCWARM_FAILPOINT(?:_INTO|_CHECK)?\(\s*"([^"]*)")re");
  for (const char* dir : {"src", "server/src"}) {
    for (const auto& e : fs::recursive_directory_iterator(fs::path(FCWARM_SOURCE_DIR) / dir)) {
      auto ext = e.path().extension();
      if (!e.is_regular_file() || (ext != ".cpp" && ext != ".hpp")) continue;
      std::string text = Slurp(e.path());
      for (std::sregex_iterator it(text.begin(), text.end(), kUse), end; it != end; ++it) {
        out.insert((*it)[1]);
        if (all) all->insert((*it)[1]);
      }
    }
  }
  return out;
}

std::string Join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& n : s) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::set<std::string> Minus(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::set<std::string> out;
  for (const auto& n : a)
    if (!b.count(n)) out.insert(n);
  return out;
}

Status ReachA() {
  FCWARM_FAILPOINT("container.start");
  return Status::Ok();
}

}  // namespace

TEST_CASE("failpoints: the registry, docs/failpoints.md and the sources name the same failpoints") {
  auto registry = Registry();
  auto documented = Documented();
  std::multiset<std::string> uses;
  auto used = UsedInSources(&uses);
  REQUIRE(registry.size() == failpoint::kCount);  // no name twice
  CHECK_MESSAGE(Minus(registry, documented).empty(),
                "registered, not in docs/failpoints.md: " << Join(Minus(registry, documented)));
  CHECK_MESSAGE(Minus(documented, registry).empty(),
                "in docs/failpoints.md, not registered: " << Join(Minus(documented, registry)));
  CHECK_MESSAGE(Minus(registry, used).empty(),
                "registered, used nowhere in src/: " << Join(Minus(registry, used)));
  CHECK_MESSAGE(Minus(used, registry).empty(), "used, not registered: " << Join(Minus(used, registry)));
  for (const auto& n : used)
    CHECK_MESSAGE(uses.count(n) == 1, n << " is used at " << uses.count(n) << " places");
  // The registry lists the failpoints in the docs' order, so both read alike.
  std::vector<std::string> doc_order;
  {
    std::istringstream in(Slurp(fs::path(FCWARM_SOURCE_DIR) / "docs" / "failpoints.md"));
    static const std::regex kRow(R"(^\| `([^`]+)` \|)");
    std::string line;
    std::smatch m;
    while (std::getline(in, line))
      if (std::regex_search(line, m, kRow)) doc_order.push_back(m[1]);
  }
  std::vector<std::string> reg_order;
  for (const auto& f : failpoint::kFailpoints) reg_order.emplace_back(f.name);
  CHECK(doc_order == reg_order);
}

TEST_CASE("failpoints: off unless configured, error mode returns Internal naming the failpoint") {
  failpoint::Reset();
  CHECK_FALSE(failpoint::Armed());
  CHECK(ReachA().ok());
  REQUIRE(failpoint::Configure("container.start=error").ok());
  CHECK(failpoint::Armed());
  CHECK(failpoint::Describe() == "container.start=error");
  for (int i = 0; i < 2; ++i) {  // every hit fires
    auto st = ReachA();
    CHECK(st.code() == StatusCode::kInternal);
    CHECK(st.message() == "failpoint container.start: injected error");
  }
  CHECK(FCWARM_FAILPOINT_CHECK("container.create").ok());  // another failpoint stays off
  Result<int> r = 7;
  FCWARM_FAILPOINT_INTO("container.start", r);
  CHECK(r.status().message() == "failpoint container.start: injected error");
  Result<int> failed = Status::Unavailable("own error");
  FCWARM_FAILPOINT_INTO("container.start", failed);  // an error stays the step's own
  CHECK(failed.status().message() == "own error");
  failpoint::Reset();
  CHECK_FALSE(failpoint::Armed());
  CHECK(ReachA().ok());
}

TEST_CASE("failpoints: @N fires at the N-th hit only") {
  REQUIRE(failpoint::Configure(" container.start = error@3 , container.create=crash@5").ok());
  CHECK(failpoint::Describe() == "container.create=crash@5,container.start=error@3");
  CHECK(ReachA().ok());
  CHECK(ReachA().ok());
  CHECK_FALSE(ReachA().ok());
  CHECK(ReachA().ok());
  failpoint::Reset();
}

TEST_CASE("failpoints: a bad spec is refused naming the entry, and arms nothing") {
  REQUIRE(failpoint::Configure("container.start=error").ok());
  struct Bad {
    const char* spec;
    const char* says;
  };
  for (const Bad& b : {Bad{"nope=crash", "failpoint 'nope' is unknown (known: snapshot.build.boot,"},
                       Bad{"container.start=boom", "failpoint 'container.start=boom': unknown mode 'boom'"},
                       Bad{"container.start", "failpoint 'container.start' is not name=crash|error[@N]"},
                       Bad{"container.start=crash,", "failpoint '' is not name=crash|error[@N]"},
                       Bad{"container.start=crash@0", "@N must be a hit number"},
                       Bad{"container.start=crash@x", "@N must be a hit number"},
                       Bad{"container.start=crash,container.start=error", "'container.start' is given twice"},
                       Bad{"store.tx.after_commit=error", "'store.tx.after_commit' supports crash only"}}) {
    auto st = failpoint::Configure(b.spec);
    CHECK_MESSAGE(st.code() == StatusCode::kInvalidArgument, b.spec);
    CHECK_MESSAGE(st.message().find(b.says) != std::string::npos, b.spec << ": " << st.message());
    CHECK_FALSE(failpoint::Armed());  // the earlier configuration is gone too
  }
  CHECK(failpoint::Configure("").ok());
  CHECK(failpoint::Configure("store.tx.after_commit=crash").ok());
  failpoint::Reset();
}

TEST_CASE("failpoints: FCWARM_FAILPOINTS configures, errors name the variable") {
  ::setenv("FCWARM_FAILPOINTS", "snapshot.gc=bad", 1);
  auto st = failpoint::ConfigureFromEnvironment();
  CHECK(st.message().rfind("FCWARM_FAILPOINTS: failpoint 'snapshot.gc=bad'", 0) == 0);
  ::setenv("FCWARM_FAILPOINTS", "snapshot.gc=error", 1);
  CHECK(failpoint::ConfigureFromEnvironment().ok());
  CHECK(failpoint::Describe() == "snapshot.gc=error");
  ::unsetenv("FCWARM_FAILPOINTS");
  CHECK(failpoint::ConfigureFromEnvironment().ok());
  CHECK_FALSE(failpoint::Armed());
}

TEST_CASE("failpoints: crash mode kills the process with SIGKILL at the failpoint") {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (!failpoint::Configure("container.start=crash@2").ok()) ::_exit(3);
    (void)ReachA();  // the first hit passes
    (void)ReachA();
    ::_exit(0);  // not reached
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
}
