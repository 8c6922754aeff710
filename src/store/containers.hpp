// Private: typed access to the `containers` table (read joined with the container's VM). Caller holds the
// lock (StoreDb::With/Tx).
#pragma once

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fcwarm/container_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::detail {

/// A container record as stored, with what the record does not show.
struct ContainerRow {
  ContainerRecord rec;      ///< With its VM's boot method, snapshot, state, address and hostname.
  bool started = false;     ///< Start() claimed it.
  bool force_cold = false;  ///< As requested.
  std::optional<int64_t> wait_for_creating_ms;  ///< As requested.
  bool has_logs = false;                        ///< A copy of its output is stored.
  Timings vm_timings;                           ///< Its VM's timings.
  std::string vm_last_error;                    ///< Its VM's last error.
  std::optional<int64_t> pull_layers;           ///< The image pull (rec.pull), once one started.
  std::optional<int64_t> pull_bytes;            ///< As pull_layers.
  std::optional<int64_t> pull_ms;               ///< As pull_layers (whole ms).
  std::optional<int64_t> pull_layers_total;     ///< As pull_layers.
  std::optional<int64_t> pull_bytes_total;      ///< As pull_layers.
  std::optional<int64_t> pull_done;             ///< As pull_layers (0/1).
  BootMethod vm_boot_method = BootMethod::kCold;  ///< Its VM's boot method as stored (rec.boot_method says when
                                                  ///< it is known).
};

/// The container with this id; NotFound.
Result<ContainerRow> ContainerById(SQLite::Database& db, const std::string& id);
/// Containers newest first, destroyed ones only when asked.
std::vector<ContainerRow> ListContainers(SQLite::Database& db, bool include_destroyed);
/// True when a container has this id.
bool ContainerExists(SQLite::Database& db, const std::string& id);
/// Inserts a new container, `provisioning`: `rec`'s id, name, runtime image, runtime, container image,
/// command and env, and the request's provisioning options.
void InsertContainer(SQLite::Database& db, const ContainerRecord& rec, bool force_cold,
                     std::optional<int64_t> wait_for_creating_ms, int64_t now);
/// Claims a prepared container for Start(); false when it is not `provisioning` or was claimed before.
bool ClaimContainer(SQLite::Database& db, const std::string& id, int64_t now);
/// A prepared container never started becomes `failed` with `reason`; false when it was started.
bool AbandonContainer(SQLite::Database& db, const std::string& id, const std::string& reason, int64_t now);
/// Every `provisioning` or `pulling` container becomes `failed` with `error`; returns how many.
int FailProvisioningContainers(SQLite::Database& db, const std::string& error, int64_t now);
/// A provisioning container starts pulling its image (`pulling` true), or is done with it (back to
/// `provisioning` while its container is created).
void SetContainerPulling(SQLite::Database& db, const std::string& id, bool pulling, int64_t now);
/// Records a finished image pull.
void RecordImagePull(SQLite::Database& db, const std::string& id, const ImagePull& pull, int64_t now);
/// The published ports ("HOST_IP:HOST_PORT:CONTAINER_PORT/PROTO") of every container that holds them
/// (provisioning, pulling or running).
std::vector<std::string> PublishedPorts(SQLite::Database& db);
/// Every `running` container becomes `lost` with `error`; returns how many.
int LoseRunningContainers(SQLite::Database& db, const std::string& error, int64_t now);
/// Records Docker's id of the container.
void SetContainerDockerId(SQLite::Database& db, const std::string& id, const std::string& docker_id,
                          int64_t now);
/// Records how the Docker container is started ("parked" or "created") and why the created path was taken.
void SetContainerPath(SQLite::Database& db, const std::string& id, const std::string& path,
                      const std::string& reason, int64_t now);
/// The container runs from now on.
void MarkContainerRunning(SQLite::Database& db, const std::string& id, int64_t now);
/// A running container exited with `exit_code`; no change when it is not `running` any more.
void RecordContainerExit(SQLite::Database& db, const std::string& id, int exit_code, int64_t now);
/// A command that ran from `started_at` to `finished_at` exited with `exit_code` and `logs`.
void RecordCommandExit(SQLite::Database& db, const std::string& id, int exit_code, const ContainerLogs& logs,
                       int64_t started_at, int64_t finished_at);
/// Stores a copy of the container's output.
void StoreContainerLogs(SQLite::Database& db, const std::string& id, const ContainerLogs& logs);
/// The stored copy of the container's output (empty when none); NotFound.
Result<ContainerLogs> StoredContainerLogs(SQLite::Database& db, const std::string& id);
/// The container ends in `state` with `error` (and `timings`, unless null).
void FinishContainer(SQLite::Database& db, const std::string& id, ContainerState state,
                     const std::string& error, const Timings* timings, int64_t now);
/// Sets the container's state and last error.
void SetContainerState(SQLite::Database& db, const std::string& id, ContainerState state,
                       const std::string& error, int64_t now);
/// Sets the container's timings.
void SetContainerTimings(SQLite::Database& db, const std::string& id, const Timings& timings, int64_t now);

}  // namespace fcwarm::detail
