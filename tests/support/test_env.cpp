#include "support/test_env.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <thread>

namespace fcwarm::testing {
namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "fcwarm-test-XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  REQUIRE(p != nullptr);
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string WriteFile(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << content;
  return path.string();
}

TestBed::TestBed(std::function<void(ServiceOptions&)> tweak, std::string db_path) {
  vmm = std::make_shared<FakeVmm>();
  vmms = std::make_shared<VmmRegistry>();
  vmms->Add(vmm);
  options = ServiceOptions::UnderDirectory(dir.str());
  if (!db_path.empty()) options.store.path = db_path;
  options.snapshots.agent_timeout = std::chrono::seconds(5);
  options.snapshots.runtime_timeout = std::chrono::seconds(5);
  options.snapshots.poll_interval = std::chrono::milliseconds(5);
  options.snapshots.stop_grace = std::chrono::milliseconds(0);
  options.health.rebuild_backoff_initial = std::chrono::milliseconds(20);
  options.health.rebuild_backoff_max = std::chrono::milliseconds(200);
  options.restore.wait_for_creating = std::chrono::seconds(5);
  options.restore.restore_agent_timeout = std::chrono::seconds(2);
  options.restore.cold_agent_timeout = std::chrono::seconds(5);
  options.restore.restore_runtime_timeout = std::chrono::milliseconds(200);
  options.restore.cold_runtime_timeout = std::chrono::seconds(5);
  options.restore.poll_interval = std::chrono::milliseconds(5);
  options.restore.stop_grace = std::chrono::milliseconds(0);
  if (tweak) tweak(options);
  auto s = Service::Open(options, vmms);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  service = std::move(s).value();
}

TestBed::~TestBed() { service.reset(); }

void TestBed::Reopen() {
  service.reset();
  auto s = Service::Open(options, vmms);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  service = std::move(s).value();
}

RuntimeImage TestBed::AddImage(const std::string& name, const std::string& check_kind) {
  RuntimeImage img;
  img.name = name;
  img.backend = "fake";
  img.kernel_path = WriteFile(dir.path() / "images" / name / "vmlinux", "kernel of " + name);
  img.initrd_path = WriteFile(dir.path() / "images" / name / "initrd", "initrd of " + name);
  img.shape.memory_mib = 128;
  img.runtime_check.kind = check_kind;
  if (check_kind == "file") img.runtime_check.path = "/run/ready";
  if (check_kind == "docker") img.runtime_check.path = "/var/run/docker.sock";
  auto r = service->images().Register(img);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return *r;
}

RuntimeSnapshot TestBed::BuildSnapshot(const std::string& image_id) {
  auto s = service->snapshots().CreateSnapshot(image_id);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  auto done = service->snapshots().WaitWhileCreating(s->id, std::chrono::seconds(20));
  REQUIRE(done.ok());
  return *done;
}

bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

int CountEntries(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return 0;
  int n = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) ++n;
  return n;
}

int CountQemuProcesses(const std::string& under) {
  int n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::ifstream comm(it->path() / "comm");
    std::string name;
    if (!comm || !std::getline(comm, name) || name.rfind("qemu-system", 0) != 0) continue;
    std::ifstream cmdline(it->path() / "cmdline", std::ios::binary);
    std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    if (args.find(under) != std::string::npos) ++n;
  }
  return n;
}

}  // namespace fcwarm::testing
