#include <doctest/doctest.h>

#include <SQLiteCpp/SQLiteCpp.h>

#include "store/store_db.hpp"
#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;

namespace {
int64_t CountImages(TestBed& bed) {
  return detail::DbOf(bed.service->store()).With([](SQLite::Database& db) -> Result<int64_t> {
    return db.execAndGet("SELECT COUNT(*) FROM runtime_images").getInt64();
  }).value();
}
}  // namespace

TEST_CASE("register, get, list and remove an image") {
  TestBed bed;
  auto img = bed.AddImage("minimal");
  CHECK(Id::IsValid(img.id));
  CHECK(img.created_at > 0);
  auto got = bed.service->images().Get(img.id);
  REQUIRE(got.ok());
  CHECK(got->name == "minimal");
  CHECK(got->path() == img.initrd_path);
  CHECK(bed.service->images().GetByName("minimal")->id == img.id);
  CHECK(bed.service->images().List()->size() == 1);
  CHECK(bed.service->images().Remove(img.id).ok());
  CHECK(bed.service->images().Get(img.id).status().code() == StatusCode::kNotFound);
}

TEST_CASE("bad image input names the field and writes nothing") {
  TestBed bed;
  auto kernel = WriteFile(bed.dir.path() / "k", "kernel");
  auto base = [&] {
    RuntimeImage i;
    i.name = "ok-name";
    i.backend = "fake";
    i.kernel_path = kernel;
    return i;
  };
  struct Case {
    std::function<void(RuntimeImage&)> mutate;
    std::string field;
    StatusCode code;
  };
  std::vector<Case> cases = {
      {[](RuntimeImage& i) { i.name = "../etc"; }, "name", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.name = "a/b"; }, "name", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.name = ""; }, "name", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.backend = "vmware"; }, "backend", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.kernel_path = "relative/vmlinux"; }, "kernel_path", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.kernel_path = "/tmp/../etc/passwd"; }, "kernel_path", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.kernel_path = "/does/not/exist"; }, "kernel_path", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.kernel_path = "/tmp"; }, "kernel_path", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.initrd_path = "/nope"; }, "initrd_path", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.shape.vcpus = 0; }, "vcpus", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.shape.vcpus = 100000; }, "vcpus", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.shape.memory_mib = 1; }, "memory_mib", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.shape.memory_mib = 4000000000u; }, "memory_mib", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.boot_args = std::string("a\nb"); }, "boot_args", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.runtime_check.kind = "magic"; }, "runtime_check.kind", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.runtime_check.kind = "file"; }, "runtime_check.path", StatusCode::kInvalidArgument},
      {[](RuntimeImage& i) { i.runtime_check.kind = "command"; }, "runtime_check.argv", StatusCode::kInvalidArgument},
  };
  for (const auto& c : cases) {
    auto img = base();
    c.mutate(img);
    auto r = bed.service->images().Register(img);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == c.code);
    CHECK_MESSAGE(r.status().message().rfind(c.field, 0) == 0, r.status().message());
  }
  CHECK(CountImages(bed) == 0);
  // Duplicate names.
  REQUIRE(bed.service->images().Register(base()).ok());
  auto dup = bed.service->images().Register(base());
  CHECK(dup.status().code() == StatusCode::kAlreadyExists);
  CHECK(CountImages(bed) == 1);
  // Malformed and unknown ids.
  CHECK(bed.service->images().Get("../x").status().code() == StatusCode::kInvalidArgument);
  CHECK(bed.service->images().Get(Id::Generate().str()).status().code() == StatusCode::kNotFound);
  CHECK(bed.service->images().Remove("nope").code() == StatusCode::kInvalidArgument);
}

TEST_CASE("an image with snapshots cannot be removed") {
  TestBed bed;
  auto img = bed.AddImage();
  auto snap = bed.BuildSnapshot(img.id);
  REQUIRE(snap.state == SnapshotState::kReady);
  CHECK(bed.service->images().Remove(img.id).code() == StatusCode::kFailedPrecondition);
  REQUIRE(bed.service->snapshots().Delete(snap.id).ok());
  CHECK(bed.service->images().Remove(img.id).ok());
}

TEST_CASE("RuntimeImageFromArtifacts describes the project's guest artifacts and names what is missing") {
  TempDir d;
  CHECK(RuntimeImageFromArtifacts("bogus", d.str()).status().code() == StatusCode::kInvalidArgument);
  auto missing = RuntimeImageFromArtifacts("docker", d.str());
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("bzImage") != std::string::npos);
  for (const char* f : {"bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4"}) WriteFile(d.path() / f, "x");
  auto docker = RuntimeImageFromArtifacts("docker", d.str());
  REQUIRE_MESSAGE(docker.ok(), docker.status().ToString());
  CHECK(docker->name == "docker");
  CHECK(docker->runtime_check.kind == "docker");
  CHECK(docker->shape.memory_mib == 1024);
  CHECK(docker->rootfs_path == (d.path() / "docker-rootfs.ext4").string());
  auto minimal = RuntimeImageFromArtifacts("minimal", d.str());
  REQUIRE_FALSE(minimal.ok());
  CHECK(minimal.status().message().find("disk.ext4") != std::string::npos);
}
