// A broken store (issue 15): a database file fcwarm cannot use is refused at open with a Status naming the
// file and what is wrong, and the file is left exactly as it was (never replaced, emptied or migrated).
#include <SQLiteCpp/SQLiteCpp.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fcwarm/fcwarm.hpp"
#include "support/test_env.hpp"
#include "util/common.hpp"
#include "util/scope_guard.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;
namespace fs = std::filesystem;

namespace {

std::string Contents(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A database with some pages of events, closed (its write-ahead log checkpointed into the file).
void MakeDatabase(const std::string& path, int events = 400) {
  auto store = Store::Open({.path = path});
  REQUIRE(store.ok());
  for (int i = 0; i < events; ++i) {
    Event e;
    e.kind = EventKind::kBoot;
    e.message = std::string(200, static_cast<char>('a' + i % 26));
    REQUIRE((*store)->AppendEvent(e).ok());
  }
}

// Opening `path` fails with `code`, the message names the file and contains `words`, the file is unchanged.
void CheckRefused(const std::string& path, StatusCode code, const std::string& words,
                  std::chrono::milliseconds busy_timeout = std::chrono::milliseconds(5000)) {
  const std::string before = Contents(path);
  auto store = Store::Open({.path = path, .busy_timeout = busy_timeout});
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().code() == code);
  CHECK_MESSAGE(store.status().message().find("'" + path + "'") != std::string::npos,
                store.status().message());
  CHECK_MESSAGE(store.status().message().find(words) != std::string::npos, store.status().message());
  CHECK(fs::exists(path));
  CHECK(Contents(path) == before);
}

}  // namespace

TEST_CASE("an existing empty database file is refused and left as it is, not started over") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  std::ofstream(path).close();
  CheckRefused(path, StatusCode::kFailedPrecondition, "is an empty file (0 bytes: truncated?)");
  CHECK(fs::file_size(path) == 0);
}

TEST_CASE("an empty database file is refused even beside a write-ahead log") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  std::ofstream(path).close();
  WriteFile(path + "-wal",
            std::string(8192, 'w'));  // SQLite would ignore a log it cannot use, and start over
  CheckRefused(path, StatusCode::kFailedPrecondition, "is an empty file");
  CHECK(Contents(path + "-wal") == std::string(8192, 'w'));
}

TEST_CASE("a file that is not a database is refused, not replaced") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  WriteFile(path, std::string(8192, 'z'));
  CheckRefused(path, StatusCode::kFailedPrecondition, "is corrupt or truncated");
}

TEST_CASE("a truncated database is refused") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  MakeDatabase(path);
  REQUIRE(fs::file_size(path) > 64 * 1024);
  fs::resize_file(path, fs::file_size(path) / 2);
  CheckRefused(path, StatusCode::kFailedPrecondition, "is corrupt or truncated");
}

TEST_CASE("a damaged page inside a database is found by the integrity check at open") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  MakeDatabase(path);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    REQUIRE(f);
    f.seekp(10 * 4096);  // a page of the events table, well past the schema
    const std::string junk(2 * 4096, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  CheckRefused(path, StatusCode::kFailedPrecondition, "is corrupt or truncated");
}

TEST_CASE("a database another connection holds a write lock on is refused after the busy timeout") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  MakeDatabase(path, 1);
  SQLite::Database holder(path, SQLite::OPEN_READWRITE);
  holder.exec("BEGIN EXCLUSIVE");
  auto t = std::chrono::steady_clock::now();
  CheckRefused(path, StatusCode::kUnavailable, "is locked by another process",
               std::chrono::milliseconds(300));
  CHECK(std::chrono::steady_clock::now() - t >= std::chrono::milliseconds(300));
  holder.exec("ROLLBACK");
  CHECK(Store::Open({.path = path}).ok());  // the lock is gone: it opens
}

TEST_CASE("a read-only database file is refused at open, not at the first write") {
  TempDir dir;
  auto path = (dir.path() / "fcwarm.db").string();
  MakeDatabase(path, 1);
  util::ScopeGuard restore([&] { ::chmod(path.c_str(), 0644); });
  int immutable_fd = -1;
  util::ScopeGuard mutable_again([&] {
    if (immutable_fd < 0) return;
    int flags = 0;
    if (::ioctl(immutable_fd, FS_IOC_GETFLAGS, &flags) == 0) {
      flags &= ~FS_IMMUTABLE_FL;
      (void)::ioctl(immutable_fd, FS_IOC_SETFLAGS, &flags);
    }
    ::close(immutable_fd);
  });
  if (::geteuid() != 0) {
    REQUIRE(::chmod(path.c_str(), 0444) == 0);
  } else {
    // Root writes a 0444 file anyway: the immutable attribute stops it (chattr +i), where the file system has
    // it.
    immutable_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(immutable_fd >= 0);
    int flags = 0;
    if (::ioctl(immutable_fd, FS_IOC_GETFLAGS, &flags) != 0 ||
        (flags |= FS_IMMUTABLE_FL, ::ioctl(immutable_fd, FS_IOC_SETFLAGS, &flags)) != 0) {
      MESSAGE("skipped: the file system of " << path << " has no immutable attribute");
      return;
    }
  }
  CheckRefused(path, StatusCode::kFailedPrecondition, "is read-only");
}

TEST_CASE("Service::Open returns a broken store's Status, and refuses a second owner of the data directory") {
  TempDir dir;
  auto vmms = std::make_shared<VmmRegistry>();
  vmms->Add(std::make_shared<FakeVmm>());
  auto options = ServiceOptions::UnderDirectory(dir.str());
  WriteFile(options.store.path, std::string(4096, 'z'));
  auto broken = Service::Open(options, vmms);
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().code() == StatusCode::kFailedPrecondition);
  CHECK(broken.status().message().find(options.store.path) != std::string::npos);
  CHECK(Contents(options.store.path) == std::string(4096, 'z'));

  fs::remove(options.store.path);
  auto first = Service::Open(options, vmms);
  REQUIRE(first.ok());
  auto second = Service::Open(options, vmms);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == StatusCode::kFailedPrecondition);
  CHECK(second.status().message().find("in use by another fcwarm process") != std::string::npos);
}
