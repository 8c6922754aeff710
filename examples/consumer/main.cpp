// A program built against the installed library (find_package(fcwarm)).
//
//   fcwarm_consumer                    opens an in-memory store, prints the version and schema version
//   fcwarm_consumer DOCKER_IMAGE_DIR   runs a busybox container on a cold VM, builds the runtime snapshot,
//                                      runs one on a warm VM, and prints both times (QEMU; data in a temp dir)
#include <fcwarm/fcwarm.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <unistd.h>

namespace {

int Fail(const fcwarm::Status& st) {
  std::cerr << st.ToString() << "\n";
  return 1;
}

// Runs one container to completion; returns its create -> running time in ms, or a negative value on error.
double RunContainer(fcwarm::Service& svc, const std::string& image_id, const char* label) {
  fcwarm::ContainerRequest req;
  req.runtime_image = image_id;
  req.image = "busybox:latest";
  req.command = {"sh", "-c", "echo hello from $(hostname)"};
  auto c = svc.containers().Create(req);
  if (!c.ok()) return Fail(c.status()), -1;
  auto done = svc.containers().Wait(c->id, std::chrono::minutes(2));
  auto logs = svc.containers().Logs(c->id);
  std::cout << label << ": " << (c->boot_method ? fcwarm::ToString(*c->boot_method) : "unknown") << " VM, running after " << c->timings["total"]
            << " ms, " << (done.ok() ? fcwarm::ToString(done->state) : "?") << ", output: "
            << (logs.ok() ? logs->stdout_data : logs.status().ToString());
  (void)svc.containers().Destroy(c->id);
  return c->timings["total"];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    auto store = fcwarm::Store::Open({.path = ":memory:"});
    if (!store.ok()) return Fail(store.status());
    std::cout << "fcwarm " << fcwarm::Version() << " schema " << (*store)->SchemaVersion() << "\n";
    return 0;
  }
  auto dir = std::filesystem::temp_directory_path() / ("fcwarm-consumer-" + std::to_string(::getpid()));
  auto vmms = std::make_shared<fcwarm::VmmRegistry>();
  vmms->Add(std::shared_ptr<fcwarm::Vmm>(fcwarm::MakeQemuVmm(fcwarm::QemuOptions{})));
  auto o = fcwarm::ServiceOptions::UnderDirectory(dir.string());
  int rc = 0;
  {
    auto svc = fcwarm::Service::Open(o, vmms);
    if (!svc.ok()) return Fail(svc.status());
    auto img = fcwarm::RuntimeImageFromArtifacts("docker", argv[1]);
    if (!img.ok()) return Fail(img.status());
    auto image = (*svc)->images().Register(*img);
    if (!image.ok()) return Fail(image.status());
    double cold = RunContainer(**svc, image->id, "cold");
    auto snap = (*svc)->snapshots().CreateSnapshot(image->id);
    if (!snap.ok()) return Fail(snap.status());
    auto ready = (*svc)->snapshots().WaitWhileCreating(snap->id, std::chrono::minutes(10));
    if (!ready.ok() || ready->state != fcwarm::SnapshotState::kReady) {
      return Fail(ready.ok() ? fcwarm::Status::Unavailable(ready->last_error) : ready.status());
    }
    double warm = RunContainer(**svc, image->id, "warm");
    if (cold > 0 && warm > 0) {
      std::cout << "warm is " << cold / warm << "x faster\n";
    } else {
      rc = 1;
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}
