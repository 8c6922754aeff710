// Helpers for tests: scratch directories, fake image files, a Service over a FakeVmm.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "fcwarm/fcwarm.hpp"
#include "support/fake_vmm.hpp"

namespace fcwarm::testing {

/// A fresh directory under /tmp, removed with its contents at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

/// Writes a file with some content and returns its path.
std::string WriteFile(const std::filesystem::path& path, const std::string& content);

/// A Service over a FakeVmm in a temp dir, with short timeouts suited to tests.
struct TestBed {
  explicit TestBed(std::function<void(ServiceOptions&)> tweak = {}, std::string db_path = "");
  ~TestBed();
  /// Registers an image on the fake backend; `check_kind` "docker" makes it a docker runtime image.
  RuntimeImage AddImage(const std::string& name = "img", const std::string& check_kind = "none");
  /// Builds a snapshot and waits until it leaves `creating`.
  RuntimeSnapshot BuildSnapshot(const std::string& image_id);
  /// Reopens the service on the same directory (simulates a restart).
  void Reopen();

  TempDir dir;
  std::shared_ptr<FakeVmm> vmm;
  std::shared_ptr<VmmRegistry> vmms;
  ServiceOptions options;
  std::unique_ptr<Service> service;
};

/// Polls `pred` until true or `timeout`; returns its last value.
bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// Number of "qemu-system*" processes on this host whose command line mentions `under` (a test bed's data
/// directory: every VM's sockets and disks live below it). Scoped so that VMs of other tests or programs
/// running on the same machine do not count.
int CountQemuProcesses(const std::string& under);

/// Number of entries in a directory (0 if missing).
int CountEntries(const std::filesystem::path& dir);

}  // namespace fcwarm::testing
