#include "fcwarm/service.hpp"

#include "core/guest_network.hpp"
#include "fcwarm/ids.hpp"
#include "net/ipv4.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace fcwarm {

ServiceOptions ServiceOptions::UnderDirectory(const std::string& data_dir) {
  std::error_code ec;
  std::filesystem::path d = std::filesystem::absolute(data_dir, ec);
  if (ec) d = data_dir;
  ServiceOptions o;
  o.store.path = (d / "fcwarm.db").string();
  o.snapshots.root_dir = (d / "snapshots").string();
  o.snapshots.build_dir = (d / "build").string();
  o.restore.vm_dir = (d / "vms").string();
  return o;
}

Result<std::unique_ptr<Service>> Service::Open(ServiceOptions options, std::shared_ptr<VmmRegistry> vmms) {
  if (!vmms) return Status::InvalidArgument("vmms: must not be null");
  if (auto net = internal::ResolveGuestNetwork(options.restore); !net.ok()) {
    return net.status().WithContext("restore options");
  }
  // Build VMs that pull get the network clones get: one address pool, one egress policy, one registry setup.
  options.snapshots.network = internal::NetworkOptionsOf(options.restore);
  options.snapshots.leave_running_vms = true;  // the RestoreEngine re-adopts them (live restore)
  // Waiting for another node's build is bounded like waiting for a `creating` snapshot here.
  options.snapshots.coordination.wait_for_build = options.restore.wait_for_creating;
  if (!net::ParseIpv4(options.containers.publish_address)) {
    return Status::InvalidArgument("containers.publish_address: '" + options.containers.publish_address.substr(0, 64) +
                                   "' is not an IPv4 address");
  }
  for (const auto& [ref, n] : options.restore.pool) {
    if (!Id::IsValid(ref) && !ValidateName("restore.pool", ref).ok()) {
      return Status::InvalidArgument("restore.pool: '" + ref.substr(0, 64) +
                                     "' is neither a runtime image id nor a valid image name");
    }
    if (n > RestoreOptions::kMaxPoolSize) {
      return Status::InvalidArgument("restore.pool: size " + std::to_string(n) + " of '" + ref + "' is out of range 0-" +
                                     std::to_string(RestoreOptions::kMaxPoolSize));
    }
  }
  if (options.restore.pool_idle_timeout.count() < 0) {
    return Status::InvalidArgument("restore.pool_idle_timeout: must not be negative");
  }
  if (options.containers.pull_timeout.count() <= 0) {
    return Status::InvalidArgument("containers.pull_timeout: must be positive");
  }
  std::unique_ptr<Service> s(new Service());
  s->vmms_ = std::move(vmms);
  if (options.store.path != ":memory:") {
    auto parent = std::filesystem::path(options.store.path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    std::string lock_path = options.store.path + ".lock";
    s->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd_ < 0) {
      int err = errno;
      // A read-only file system (or directory) shows here first: the lock file is opened for writing.
      StatusCode code = err == EROFS || err == EACCES || err == EPERM ? StatusCode::kFailedPrecondition
                        : err == ENOSPC || err == EDQUOT              ? StatusCode::kResourceExhausted
                                                                      : StatusCode::kUnavailable;
      return Status(code, "the store '" + options.store.path +
                              "' cannot be used: cannot open its lock file " + lock_path + ": " +
                              std::strerror(err));
    }
    if (::flock(s->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      return Status::FailedPrecondition("the store '" + options.store.path +
                                        "' is in use by another fcwarm process (lock " + lock_path +
                                        "); talk to that process (e.g. the server) instead");
    }
  }
  auto store = Store::Open(options.store);
  if (!store.ok()) return store.status();
  s->store_ = std::move(store).value();
  s->images_ = std::make_unique<ImageRegistry>(*s->store_, *s->vmms_);
  auto snaps = SnapshotManager::Create(*s->store_, *s->vmms_, options.snapshots);
  if (!snaps.ok()) return snaps.status();
  s->snapshots_ = std::move(snaps).value();
  s->health_ = std::make_unique<HealthTracker>(*s->store_, *s->snapshots_, options.health);
  s->engine_ = std::make_unique<RestoreEngine>(*s->store_, *s->vmms_, *s->snapshots_, *s->health_, options.restore);
  s->containers_ = std::make_unique<ContainerManager>(*s->store_, *s->images_, *s->engine_, options.containers);
  return s;
}

Service::~Service() {
  containers_.reset();
  engine_.reset();
  health_.reset();
  snapshots_.reset();
  images_.reset();
  store_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

}  // namespace fcwarm
