/// \file
/// \brief Enumerations and records of the warm-boot domain: images, snapshots, VMs, events.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"

namespace fcwarm {

/// \brief Lifecycle state of a runtime snapshot.
enum class SnapshotState {
  kCreating,   ///< A build is queued or running.
  kReady,      ///< Usable for warm restores.
  kUnhealthy,  ///< A build failed or restores failed repeatedly; awaits a rebuild.
  kDeleted,    ///< Soft-deleted; files are collected once no VM references them.
};

/// \brief Progress of a snapshot build.
enum class BuildPhase {
  kQueued,          ///< Waiting for a build worker.
  /// \brief With a snapshot repository or cluster coordination (docs/multi-host.md): waiting while another
  /// node builds the same snapshot, then fetching a published generation instead of building one.
  kFetching,
  kBooting,         ///< Cold-booting the build VM.
  kWaitingRuntime,  ///< Waiting for the guest agent and the runtime check.
  kPreloading,      ///< Container runtime images: pulling the preload images, listing the daemon's images.
  /// \brief Container runtime images: creating and starting one parked container per preloaded image.
  kParking,
  kQuiescing,       ///< Asking the guest to drop per-boot identity.
  kPausing,         ///< Pausing the VM.
  kSnapshotting,    ///< Writing memory, device state and disk.
  kVerifying,       ///< Computing checksums and writing the manifest.
  kPublishing,      ///< fsync + atomic rename into place.
  kDone,            ///< The build finished (successfully or not; see the state).
};

/// \brief How a VM was started.
enum class BootMethod {
  kWarm,  ///< Restored from a runtime snapshot.
  kCold,  ///< Booted from the kernel.
};

/// \brief Why a VM was cold-booted instead of restored.
enum class FallbackReason {
  kNone,               ///< Not a fallback (warm boot).
  kNoSnapshot,         ///< No usable (non-deleted) snapshot exists for the image.
  kSnapshotCreating,   ///< The snapshot was still being built after the wait window.
  kSnapshotUnhealthy,  ///< The snapshot is unhealthy.
  kIncompatible,       ///< The snapshot's compatibility key differs from the host's.
  kCorrupt,            ///< A snapshot file failed its checksum or is missing.
  kRestoreFailed,      ///< The VMM failed to restore the snapshot.
  kVerifyFailed,       ///< The restored clone failed identity refresh or runtime verification.
};

/// \brief Lifecycle of a VM record.
enum class VmState {
  kStarting,   ///< Being provisioned.
  kRunning,    ///< Running and verified.
  kStopped,    ///< Stopped; resources may still be held.
  kDestroyed,  ///< Destroyed; every resource released.
  kFailed,     ///< Provisioning failed.
  kLost,       ///< Found running-but-unowned at startup (the previous process crashed).
  /// \brief Restored, made unique and verified by the clone pool (RestoreOptions::pool), waiting to be taken by
  /// a request; it then becomes `starting` and `running` under the request's VM id.
  kPooled,
};

/// \brief What an Event is about.
enum class EventKind {
  kBoot,       ///< A warm/cold decision for a VM.
  kBuild,      ///< A snapshot build finished (ready or failed).
  kHealth,     ///< A snapshot's health changed (unhealthy, stale).
  kGc,         ///< Snapshot files were collected.
  kReconcile,  ///< Startup reconciliation changed a record.
  kSnapshot,   ///< A snapshot was deleted or otherwise changed by a caller.
  kRepository, ///< A generation was published to or fetched from the snapshot repository, or that failed.
};

/// \brief Stable lower-case name ("creating", ...).
std::string_view ToString(SnapshotState v);
/// \brief Stable lower-case name ("waiting_runtime", "preloading", ...).
std::string_view ToString(BuildPhase v);
/// \brief Stable lower-case name ("warm", "cold").
std::string_view ToString(BootMethod v);
/// \brief Stable lower-case name ("no_snapshot", ...); kNone is "".
std::string_view ToString(FallbackReason v);
/// \brief Stable lower-case name ("running", ...).
std::string_view ToString(VmState v);

/// \brief Stable lower-case name ("boot", "build", "health", "gc", "reconcile", "snapshot").
std::string_view ToString(EventKind v);
/// \brief Parses an EventKind name.
/// \return The value or InvalidArgument naming the allowed kinds.
Result<EventKind> ParseEventKind(std::string_view s);

/// \brief Parses a SnapshotState name.
/// \return The value or InvalidArgument.
Result<SnapshotState> ParseSnapshotState(std::string_view s);
/// \brief Parses a BuildPhase name.
/// \return The value or InvalidArgument.
Result<BuildPhase> ParseBuildPhase(std::string_view s);
/// \brief Parses a BootMethod name.
/// \return The value or InvalidArgument.
Result<BootMethod> ParseBootMethod(std::string_view s);
/// \brief Parses a FallbackReason name ("" is kNone).
/// \return The value or InvalidArgument.
Result<FallbackReason> ParseFallbackReason(std::string_view s);
/// \brief Parses a VmState name.
/// \return The value or InvalidArgument.
Result<VmState> ParseVmState(std::string_view s);

/// \brief How the runtime inside a guest is judged ready (sent to the guest agent's `runtime_ready`).
struct RuntimeCheck {
  /// \brief "none", "file", "docker" or "command". Default: "none".
  std::string kind = "none";
  /// \brief For "file": the path; for "docker": the Unix socket. Default: empty.
  std::string path;
  /// \brief For "command": the argv. Default: empty.
  std::vector<std::string> argv;
};

/// \brief The shape of a VM: what must be equal between a snapshot and its clones.
struct VmShape {
  /// \brief Virtual CPUs, 1-64. Default: 1.
  uint32_t vcpus = 1;
  /// \brief Guest memory in MiB, 64-262144. Default: 512.
  uint32_t memory_mib = 512;
};

/// \brief A runtime image: what a VM boots (kernel, initrd/rootfs), its shape, its readiness check and the
/// backend that runs it.
struct RuntimeImage {
  std::string id;            ///< Id (UUID v4 text).
  std::string name;          ///< Unique name (see ValidateName()).
  std::string backend;       ///< VMM backend name, e.g. "qemu" or "firecracker".
  std::string kernel_path;   ///< Absolute path of the guest kernel.
  std::string initrd_path;   ///< Absolute path of the initrd, or empty.
  std::string rootfs_path;   ///< Absolute path of the base disk image (read-only), or empty.
  std::string boot_args;     ///< Extra kernel command line.
  VmShape shape;             ///< VM shape.
  RuntimeCheck runtime_check;  ///< Readiness check.
  /// \brief Container images (Docker references) every snapshot build of this image pulls before the
  /// snapshot, after SnapshotManagerOptions::preload_images; only for runtime check kind "docker", at most
  /// 32, no reference twice. Default: none.
  std::vector<std::string> preload_images;
  int64_t created_at = 0;    ///< Creation time, Unix milliseconds.
  /// \brief A path that identifies the image on disk (the rootfs if set, else the initrd, else the kernel).
  std::string path() const;
};

/// \brief One file of a snapshot generation as recorded in its manifest.
struct SnapshotFile {
  std::string name;    ///< File name inside the generation directory.
  uint64_t size = 0;   ///< Size in bytes.
  int64_t mtime_ns = 0;  ///< Modification time when the manifest was written.
  std::string xxh3;    ///< XXH3-128 digest, 32 hex digits.
};

/// \brief A container that a snapshot holds started and waiting (docs/docker-runtime.md, "Parked containers"):
/// its entrypoint is fcwarm-launch, blocked until the guest agent's `launch` op hands it a command.
struct ParkedContainer {
  std::string name;       ///< Docker's name for it in the snapshot ("fcwarm-parked-0", ...).
  std::string docker_id;  ///< Docker's container id.
  std::string image;      ///< The preload reference it runs (as listed in the preload list).
  std::string channel;    ///< Its launch channel in the guest ("/run/fcwarm/parked/NAME").
  std::vector<std::string> entrypoint;  ///< The image's default Entrypoint.
  std::vector<std::string> cmd;         ///< The image's default Cmd.
  std::vector<std::string> env;         ///< The image's Env ("NAME=value").
  std::string working_dir;              ///< The image's WorkingDir, or empty.
  std::string user;                     ///< The image's User, or empty.
};

/// \brief A runtime snapshot (DESIGN §3): a cache entry with state, health and the files of its current
/// generation.
struct RuntimeSnapshot {
  std::string id;                    ///< Id (UUID v4 text).
  std::string runtime_image_id;      ///< The image it was built from.
  SnapshotState state = SnapshotState::kCreating;  ///< Lifecycle state.
  BuildPhase phase = BuildPhase::kQueued;          ///< Build progress.
  int64_t generation = 0;            ///< Current generation number (0 before the first successful build).
  std::string generation_dir;        ///< Absolute directory of the current generation, or empty.
  std::string compatibility_key;     ///< Digest of everything that must match for a restore.
  std::map<std::string, std::string> compatibility;  ///< The key's components, for humans.
  uint64_t size_bytes = 0;           ///< Apparent size of the generation's files.
  uint64_t disk_bytes = 0;           ///< Allocated bytes on disk.
  std::vector<SnapshotFile> files;   ///< Files with checksums.
  std::string manifest_digest;       ///< XXH3-128 of manifest.json.
  /// \brief Where the current generation came from: "built" (by this node), "fetched" (from the snapshot
  /// repository, built by another node), or empty before the first build.
  std::string origin;
  /// \brief Container images the current generation holds: the tags (or, for untagged images, the digests)
  /// its Docker daemon listed at snapshot time, sorted; empty for runtime images without Docker and before
  /// the first build.
  std::vector<std::string> images;
  /// \brief Parked containers of the current generation, one per preloaded image (empty for runtime images
  /// without Docker, for snapshots built before parking existed, and before the first build).
  std::vector<ParkedContainer> parked;
  int64_t success_count = 0;         ///< Warm restores that succeeded.
  int64_t failure_count = 0;         ///< Warm restores that failed.
  int64_t consecutive_failures = 0;  ///< Failures since the last success.
  int64_t build_failures = 0;        ///< Consecutive failed builds (drives rebuild backoff).
  std::string last_error;            ///< Last error text, or empty.
  int64_t created_at = 0;            ///< Unix milliseconds.
  int64_t updated_at = 0;            ///< Unix milliseconds.
  std::optional<int64_t> last_used_at;  ///< Last successful warm restore, Unix milliseconds.
};

/// \brief Per-step durations in milliseconds, keyed by step name ("restore", "identity", ...).
using Timings = std::map<std::string, double>;

/// \brief A VM (or container host) record.
struct VmRecord {
  std::string id;                  ///< Id (UUID v4 text).
  std::string name;                ///< Optional caller-chosen name.
  std::string runtime_image_id;    ///< Image it runs.
  std::string snapshot_id;         ///< Snapshot it was restored from (warm), else empty.
  int64_t generation = 0;          ///< Generation it maps (warm), else 0.
  VmState state = VmState::kStarting;  ///< Lifecycle state.
  BootMethod boot_method = BootMethod::kCold;  ///< How it was started.
  FallbackReason fallback_reason = FallbackReason::kNone;  ///< Why cold, if cold.
  Timings timings;                 ///< Per-step durations.
  std::string work_dir;            ///< Per-VM directory (sockets, logs, overlay disk).
  std::string address;             ///< Guest IP address, or empty.
  std::string mac;                 ///< Guest MAC address, or empty.
  std::string hostname;            ///< Guest hostname.
  std::string last_error;          ///< Last error, or empty.
  /// \brief True when the VM was taken from the clone pool (restored in the background before the request;
  /// its timings then have `pool_take` and `agent`, no `restore`).
  bool pooled = false;
  /// \brief The id the VM's host resources are named after (work directory, network namespace, iptables rule
  /// tags, process records): the VM's own id, or for a VM taken from the pool the id the clone was restored
  /// under (the request's id replaced it on the record).
  std::string instance_id;
  int64_t created_at = 0;          ///< Unix milliseconds.
  int64_t updated_at = 0;          ///< Unix milliseconds.
};

/// \brief An entry of the event log: a warm/cold decision, a build outcome, a health change.
struct Event {
  int64_t id = 0;               ///< Monotonic id.
  int64_t time = 0;             ///< Unix milliseconds.
  EventKind kind = EventKind::kBoot;  ///< What it is about.
  std::string runtime_image_id; ///< Related image, or empty.
  std::string snapshot_id;      ///< Related snapshot, or empty.
  std::string vm_id;            ///< Related VM, or empty.
  std::string outcome;          ///< e.g. "warm", "cold", "ready", "failed", "unhealthy".
  std::string reason;           ///< e.g. a FallbackReason name.
  Timings timings;              ///< Durations, if any.
  std::string message;          ///< Human-readable detail.
};

}  // namespace fcwarm
