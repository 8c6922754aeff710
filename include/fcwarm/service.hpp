/// \file
/// \brief Service: the assembled library (store, images, snapshots, health, restore) in one object.
#pragma once

#include <memory>
#include <string>

#include "fcwarm/container_manager.hpp"
#include "fcwarm/health_tracker.hpp"
#include "fcwarm/image_registry.hpp"
#include "fcwarm/options.hpp"
#include "fcwarm/restore_engine.hpp"
#include "fcwarm/snapshot_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief Options of every component.
struct ServiceOptions {
  StoreOptions store;                 ///< Store options.
  SnapshotManagerOptions snapshots;   ///< Snapshot manager options.
  HealthOptions health;               ///< Health options.
  RestoreOptions restore;             ///< Restore options.
  ContainerOptions containers;        ///< Container options.

  /// \brief Default options with every file under one directory: `<dir>/fcwarm.db`, `<dir>/snapshots`,
  /// `<dir>/build`, `<dir>/vms` (the layout of `fcwarm-server --data-dir` and `fcwarm.open_service`).
  /// \param data_dir The directory (made absolute).
  /// \return The options.
  static ServiceOptions UnderDirectory(const std::string& data_dir);
};

/// \brief Owns and wires the core components in the right order; what the server, the bindings and the CLI
/// use.
///
/// Thread safety: the accessors may be called concurrently; each component documents its own guarantees.
class Service {
 public:
  /// \brief Opens the store, reconciles, and starts the components.
  ///
  /// One Service owns a store at a time: it holds an exclusive lock on `<store path>.lock` for its lifetime,
  /// because startup reconciliation kills the VMM processes the store records. A second Service (another
  /// process, e.g. the CLI while the server runs) gets FailedPrecondition.
  /// \param options Options; `snapshots.network` is replaced by the network fields of `restore` (build VMs
  /// that pull get the network clones get).
  /// \param vmms Backends (shared with the caller).
  /// \return The service, or the first component's error.
  static Result<std::unique_ptr<Service>> Open(ServiceOptions options, std::shared_ptr<VmmRegistry> vmms);
  /// \brief Stops every VM, waits for builds, closes the store (in reverse order of creation).
  ~Service();

  /// \brief The store.
  Store& store() { return *store_; }
  /// \brief The backends.
  VmmRegistry& vmms() { return *vmms_; }
  /// \brief The image registry.
  ImageRegistry& images() { return *images_; }
  /// \brief The snapshot manager.
  SnapshotManager& snapshots() { return *snapshots_; }
  /// \brief The health tracker.
  HealthTracker& health() { return *health_; }
  /// \brief The restore engine.
  RestoreEngine& engine() { return *engine_; }
  /// \brief The container manager.
  ContainerManager& containers() { return *containers_; }

 private:
  Service() = default;
  int lock_fd_ = -1;
  std::shared_ptr<VmmRegistry> vmms_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<ImageRegistry> images_;
  std::unique_ptr<SnapshotManager> snapshots_;
  std::unique_ptr<HealthTracker> health_;
  std::unique_ptr<RestoreEngine> engine_;
  std::unique_ptr<ContainerManager> containers_;
};

}  // namespace fcwarm
