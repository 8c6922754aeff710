/// \file
/// \brief ContainerManager: containers on warm-booted VMs (one VM per container), through the guest agent.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/image_registry.hpp"
#include "fcwarm/restore_engine.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm {

/// \brief Lifecycle of a container record.
enum class ContainerState {
  kProvisioning,  ///< Recorded; its VM is being started (warm or cold) or its container created.
  /// \brief Its VM runs and the guest's Docker daemon is pulling the container image (it did not have it).
  kPulling,
  kRunning,       ///< The container process runs (or, for the `vm` runtime without a command, the VM runs).
  kExited,        ///< The container process exited; `exit_code` is set.
  kStopped,       ///< Stopped by a caller (its VM is stopped).
  kFailed,        ///< Provisioning or container start failed; `last_error` says why.
  kLost,          ///< Its VM was lost (the owning process restarted while it ran).
  kDestroyed,     ///< Deleted; every resource released. The record keeps its history.
};

/// \brief Stable lower-case name ("provisioning", "running", ...).
std::string_view ToString(ContainerState v);
/// \brief True for the states a container never leaves by itself (exited, stopped, failed, lost, destroyed):
/// its process is not running and will not start. Provisioning, pulling and running are not terminal.
bool IsTerminal(ContainerState v);
/// \brief Parses a ContainerState name.
/// \return The value or InvalidArgument.
Result<ContainerState> ParseContainerState(std::string_view s);

/// \brief What to run.
struct ContainerRequest {
  /// \brief The runtime image (the VM), by id or by name. Empty: ContainerOptions::default_runtime_image, else
  /// the one registered container runtime image (runtime check kind "docker"); InvalidArgument saying how to
  /// choose when there is none or more than one. A VM-only runtime image is used only when named.
  std::string runtime_image;
  /// \brief Id for the container (UUID v4 text), or empty to generate one. The container's VM has the same id.
  std::string id;
  /// \brief Optional name (validated like image names: `[a-z0-9][a-z0-9._-]{0,62}`).
  std::string name;
  /// \brief The container image, a reference in Docker's grammar ("nginx:alpine",
  /// "registry.local:5000/team/app:1.2"; see ParseImageReference()). Required for a container runtime image
  /// (runtime check kind "docker"), which runs it (pulling it first when its daemon does not have it); must
  /// be empty for a VM-only runtime image.
  std::string image;
  /// \brief Command (argv). Docker runtime: the container's Cmd (empty: the image's default). Other runtime
  /// images: run in the VM through the agent's `exec` (at most `exec_timeout`); empty: the VM itself is the
  /// container.
  std::vector<std::string> command;
  /// \brief Environment variables (names `[A-Za-z_][A-Za-z0-9_]*`).
  std::map<std::string, std::string> env;
  /// \brief Working directory of the command: an absolute path (at most 4096 bytes), created when missing;
  /// empty: the image's (docker) or the agent's (vm runtime: refused, InvalidArgument).
  std::string working_dir;
  /// \brief User of the command, Docker's `--user`: "name", "uid", "name:group" or "uid:gid" (names from the
  /// container's /etc/passwd and /etc/group); empty: the image's. Docker runtime only.
  std::string user;
  /// \brief Mount the container's root filesystem read-only (Docker's `--read-only`). Docker runtime only.
  /// A parked container cannot honour it (it was created writable): the request takes the created path.
  bool read_only = false;
  /// \brief Host ports published to the container, in Docker's `-p` syntax (IPv4):
  /// "[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/tcp|/udp]", e.g. "8080:80", "127.0.0.1:8443:443/tcp",
  /// "5353:53/udp". HOST_IP defaults to ContainerOptions::publish_address; without HOST_PORT a free port is
  /// chosen. One container per VM, in the VM's network namespace (Docker's host network mode), so
  /// CONTAINER_PORT is the port the container listens on inside its VM. At most 64 entries.
  std::vector<std::string> ports;
  /// \brief Skip the warm path (forces a cold boot; reason no_snapshot). Default: false.
  bool force_cold = false;
  /// \brief Overrides RestoreOptions::wait_for_creating for this request.
  std::optional<std::chrono::milliseconds> wait_for_creating;
};

/// \brief What pulling a container's image took (docker runtime, when the daemon did not have the image).
///
/// While the pull runs (container state `pulling`, `done` false) the fields say how far it got and are
/// updated about four times a second; once it finished they say what it took.
struct ImagePull {
  int layers = 0;       ///< Layers downloaded (layers the daemon had already are not counted).
  int64_t bytes = 0;    ///< Compressed bytes downloaded (once done: the downloaded layers' announced sizes).
  double ms = 0;        ///< Duration of the pull (so far, while it runs).
  int layers_total = 0;     ///< Layers the pull downloads, as far as the registry announced them yet.
  int64_t bytes_total = 0;  ///< Announced sizes of the layers whose download started (grows while it runs).
  bool done = false;        ///< The pull finished (successfully; a failed pull leaves its last progress).
};

/// \brief A container and the VM it runs in.
struct ContainerRecord {
  std::string id;                ///< Id (UUID v4 text); equal to the VM's id.
  std::string name;              ///< Caller-chosen name, or empty.
  std::string runtime_image_id;  ///< The runtime image of its VM.
  /// \brief "docker" (a Docker container inside the VM) or "vm" (the VM is the container; a command runs
  /// through the agent).
  std::string runtime;
  std::string image;                           ///< Container image reference (docker runtime), or empty.
  std::vector<std::string> command;            ///< Command as requested.
  std::map<std::string, std::string> env;      ///< Environment as requested.
  std::string working_dir;                     ///< Working directory as requested, or empty.
  std::string user;                            ///< User as requested, or empty.
  bool read_only = false;                      ///< Read-only root filesystem as requested.
  /// \brief How the Docker container was started (docker runtime, once known): "parked" (a container the
  /// VM's snapshot held started was handed the command, docs/docker-runtime.md) or "created" (docker create +
  /// start in the VM); empty before, and for the vm runtime.
  std::string container_path;
  /// \brief Why the created path was taken ("image_not_parked", "cold_boot", "read_only", ...; see
  /// docs/docker-runtime.md), or empty for the parked path.
  std::string container_path_reason;
  /// \brief Published ports, resolved: "HOST_IP:HOST_PORT:CONTAINER_PORT/PROTO" (e.g. "127.0.0.1:8080:80/tcp"),
  /// in request order. Forwarded while the container's VM runs.
  std::vector<std::string> ports;
  /// \brief The image pull: its live progress while the container is `pulling`, then what it took; empty when
  /// the daemon had the image (a warm clone of a snapshot that preloaded it, or an image baked into the
  /// runtime image).
  std::optional<ImagePull> pull;
  ContainerState state = ContainerState::kProvisioning;  ///< Lifecycle state.
  std::string docker_id;                       ///< Docker's container id (docker runtime), or empty.
  std::optional<int> exit_code;                ///< Exit code once exited.
  /// \brief How its VM was started, once that is known: its VM got past `starting` and the container past
  /// `provisioning`. Empty before (REST renders it as null).
  std::optional<BootMethod> boot_method;
  FallbackReason fallback_reason = FallbackReason::kNone;  ///< Why its VM was cold-booted, if it was.
  /// \brief Per-step durations in ms: the VM's steps ("restore" or "cold_boot", "agent", "identity",
  /// "runtime_verify", ...; the VM's own total as "provision"), then "container_create" and "container_start"
  /// (docker runtime, created path), "container_launch" (parked path) or "exec" (vm
  /// runtime), and "total" (request to running).
  Timings timings;
  std::string snapshot_id;  ///< Snapshot its VM was restored from (warm), else empty.
  int64_t generation = 0;   ///< Snapshot generation its VM maps (warm), else 0.
  std::string vm_state;     ///< State of its VM ("running", "destroyed", ...), or empty before the VM exists.
  std::string address;      ///< Guest IP address of its VM, or empty.
  std::string mac;          ///< Guest MAC address of its VM, or empty.
  std::string hostname;     ///< Hostname of its VM.
  std::string last_error;   ///< Last error, or empty.
  int64_t created_at = 0;   ///< Unix milliseconds.
  int64_t updated_at = 0;   ///< Unix milliseconds.
  std::optional<int64_t> started_at;   ///< When the container process started, Unix milliseconds.
  std::optional<int64_t> finished_at;  ///< When it exited (or failed), Unix milliseconds.
  /// \brief Id of its VM once the VM exists (a container's VM has the container's id); empty before.
  std::optional<std::string> vm_id() const { return vm_state.empty() ? std::nullopt : std::optional(id); }
};

/// \brief A container's output.
struct ContainerLogs {
  std::string stdout_data;  ///< Standard output (capped at 1 MiB).
  std::string stderr_data;  ///< Standard error (capped at 1 MiB).
  bool truncated = false;   ///< True when an output was capped.
};

/// \brief Options of ContainerManager.
struct ContainerOptions {
  /// \brief Runtime image (id or name) of requests that name none. Empty: the one registered container runtime
  /// image (runtime check kind "docker"), when there is exactly one.
  std::string default_runtime_image;
  /// \brief Deadline of one Docker API request through the agent. Default: 60 s.
  std::chrono::milliseconds docker_timeout{60000};
  /// \brief Deadline of an image pull (the container then fails with the pull's error). Default: 300 s.
  std::chrono::milliseconds pull_timeout{300000};
  /// \brief Host address published ports bind to when a request names none: "127.0.0.1" (the default; only
  /// this host reaches them), "0.0.0.0" (every address of the host) or one address of this host.
  std::string publish_address = "127.0.0.1";
  /// \brief Deadline of a `vm`-runtime command. Default: 60 s.
  std::chrono::milliseconds exec_timeout{60000};
  /// \brief Docker Engine API version used in request paths. Default: "v1.41" (Docker 20.10).
  std::string docker_api_version = "v1.41";
  /// \brief Containers CreateAsync() starts at once (each blocks a thread while its VM boots). Default: 4.
  unsigned start_workers = 4;
  /// \brief CreateAsync() requests waiting for a start worker; beyond it CreateAsync() answers
  /// ResourceExhausted. Default: 64.
  size_t start_queue = 64;
};

/// \brief Creates containers: one VM per container from the RestoreEngine (warm when possible, cold
/// otherwise; every warm/cold decision stays there), then the container inside it through the guest agent's
/// Docker API proxy. Records (state, exit code, boot method, fallback reason, per-step timings) live in the
/// store and survive restarts.
///
/// Thread safety: safe for concurrent use; any number of Create() calls may run at once.
class ContainerManager {
 public:
  /// \brief Creates the manager and reconciles: containers left provisioning or running by a previous
  /// process whose VM no longer runs become `lost`.
  /// \param store Store; must outlive the manager.
  /// \param images Image registry; must outlive the manager.
  /// \param engine Restore engine; must outlive the manager.
  /// \param options Options.
  ContainerManager(Store& store, ImageRegistry& images, RestoreEngine& engine, ContainerOptions options);
  /// \brief Destroys the manager (VMs are stopped by the RestoreEngine).
  ~ContainerManager();
  ContainerManager(const ContainerManager&) = delete;
  ContainerManager& operator=(const ContainerManager&) = delete;

  /// \brief Validates a request and records the container as `provisioning` without starting anything
  /// (for callers that start it in the background with Start()). The published ports are checked and reserved
  /// here, before any VM starts.
  /// \param request What to run.
  /// \return The record; InvalidArgument naming the bad field (a port out of range, two entries on one host
  /// port, an address not of this host); FailedPrecondition when a host port is taken (published for another
  /// container, or held by another program); NotFound for an unknown runtime image; AlreadyExists for a used id.
  Result<ContainerRecord> Prepare(const ContainerRequest& request);
  /// \brief Starts a prepared container: provisions its VM (publishing its ports), pulls the image when the
  /// guest's daemon does not have it (state `pulling`), creates and starts the container. Blocks.
  /// \param id A container in state `provisioning` that was not started yet.
  /// \return The record (state running or exited); the provisioning or start error (the record then has
  /// state `failed` and its VM is destroyed); FailedPrecondition when it is not a fresh prepared container.
  Result<ContainerRecord> Start(const std::string& id);
  /// \brief Prepare() + Start().
  /// \param request What to run.
  /// \return As Prepare() and Start().
  Result<ContainerRecord> Create(const ContainerRequest& request);
  /// \brief Prepare(), then Start() in the background on the manager's start workers
  /// (ContainerOptions::start_workers); returns at once. Follow the container with Get() or Wait(): it leaves
  /// `provisioning` for `running`/`exited`, or `failed` with last_error. When the manager is destroyed, starts
  /// still queued become `failed` ("... shut down before provisioning started"); running ones finish first.
  /// \param request What to run.
  /// \return The record (state `provisioning`); as Prepare(); ResourceExhausted when
  /// ContainerOptions::start_queue requests are waiting already (the record is then `failed`).
  Result<ContainerRecord> CreateAsync(const ContainerRequest& request);
  /// \brief Marks a prepared container that will never be started as failed (e.g. a queue refused it).
  /// \param id The container.
  /// \param reason Recorded as last_error.
  /// \return Ok; NotFound; FailedPrecondition when it was started already.
  Status Abandon(const std::string& id, const std::string& reason);
  /// \brief Gets a container; a running docker container's state is refreshed from the daemon first.
  /// \param id The container.
  /// \return The record; InvalidArgument; NotFound.
  Result<ContainerRecord> Get(const std::string& id);
  /// \brief Lists containers newest first (running docker containers refreshed).
  /// \param include_destroyed Include destroyed containers.
  /// \return The records.
  Result<std::vector<ContainerRecord>> List(bool include_destroyed);
  /// \brief Waits until the container is no longer provisioning, pulling or running, or the deadline passes.
  /// \param id The container.
  /// \param timeout Deadline.
  /// \return The record (check its state: still running at the deadline is not an error).
  Result<ContainerRecord> Wait(const std::string& id, std::chrono::milliseconds timeout);
  /// \brief The container's output: from the daemon while its VM runs, else as captured when it exited.
  /// \param id The container.
  /// \return The logs; FailedPrecondition when none exist (still provisioning, or its VM is gone and
  /// nothing was captured).
  Result<ContainerLogs> Logs(const std::string& id);
  /// \brief Stops the container's VM (captures its logs first). Idempotent.
  /// \param id The container.
  /// \return The record; FailedPrecondition while provisioning; NotFound.
  Result<ContainerRecord> Stop(const std::string& id);
  /// \brief Destroys the container's VM and releases everything; the record stays as `destroyed`.
  /// \param id The container.
  /// \return Ok; FailedPrecondition while provisioning; NotFound.
  Status Destroy(const std::string& id);
  /// \brief An upper bound of how long Start() (and Create()) can take before it returns: the VM's
  /// RestoreEngine::ProvisionDeadline() plus the container's own create and start requests. A client waiting
  /// for a create derives its deadline from this, so a slow step ends in the library's error, not a timeout.
  std::chrono::milliseconds StartDeadline() const;
  /// \brief Containers currently provisioning (prepared, queued by CreateAsync() or starting) in this process.
  /// \return The count.
  int Provisioning() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fcwarm
