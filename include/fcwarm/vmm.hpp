/// \file
/// \brief Backend-neutral VMM and guest-agent interfaces (implemented by the QEMU and Firecracker backends).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm {

/// \brief The guest agent protocol version this library speaks (docs/guest-protocol.md).
inline constexpr int kGuestProtocolVersion = 1;

/// \brief The agent's answer to `ping`.
struct GuestInfo {
  std::string agent_version;  ///< Agent build version.
  int protocol = 0;           ///< Protocol version.
  std::string boot_id;        ///< Kernel boot id (equal in clones of one snapshot).
  int64_t uptime_ms = 0;      ///< Guest uptime.
  std::string hostname;       ///< Current hostname.
};

/// \brief Registry settings of the guest's Docker daemon (the `docker` field of the `identity` op): written to
/// its daemon.json and applied live (SIGHUP, confirmed through GET /info), see docs/guest-protocol.md.
struct GuestDockerSettings {
  /// Replaces daemon.json's `registry-mirrors`: "http://host:port" or "https://host[:port]" URLs without path.
  /// Empty clears the mirrors. Dockerd consults mirrors for Docker Hub images only.
  std::vector<std::string> registry_mirrors;
  /// Replaces daemon.json's `insecure-registries`: "host[:port]" or IPv4 CIDRs. Empty clears the list.
  std::vector<std::string> insecure_registries;
};

/// \brief What a clone must become (the `identity` op).
struct IdentityRequest {
  std::string hostname;     ///< New hostname.
  std::string iface = "eth0";  ///< Interface to configure.
  std::string mac;          ///< New MAC address, or empty to keep.
  std::string ip_cidr;      ///< New address "a.b.c.d/n", or empty to keep.
  std::string gateway;      ///< Default route, or empty to keep.
  std::string entropy;      ///< Raw random bytes fed to the guest kernel RNG.
  int64_t wall_clock_ns = 0;  ///< Wall clock to set (Unix ns), or 0 to keep.
  /// IPv4 nameservers (1 to 3) written to the guest's /etc/resolv.conf, or empty to keep it.
  std::vector<std::string> dns;
  /// Registry settings for the guest's Docker daemon, or nullopt to leave its configuration alone.
  std::optional<GuestDockerSettings> docker;
};

/// \brief The agent's answer to `identity`.
struct IdentityResult {
  std::string hostname;   ///< Hostname now set.
  std::string mac;        ///< MAC now set.
  std::string ip_cidr;    ///< Address now set.
  int64_t entropy_bytes = 0;  ///< Bytes credited to the RNG.
  bool clock_set = false;     ///< Whether the clock was set.
  /// \brief What the Docker daemon did with `docker` settings: "reloaded", "unchanged" (it already had them),
  /// "not_running" (it reads them when it starts), "reload_pending" (the image's init reloads it once it
  /// answers); empty when no settings were sent.
  std::string docker_state;
};

/// \brief The agent's answer to `runtime_ready`.
struct RuntimeReadiness {
  bool ready = false;   ///< True when the check passed.
  std::string detail;   ///< Why not, or what answered.
};

/// \brief A command to run in the guest (the `exec` op).
struct ExecRequest {
  std::vector<std::string> argv;  ///< Program and arguments (no shell unless named).
  std::string stdin_data;         ///< Bytes for standard input.
  std::chrono::milliseconds timeout{10000};  ///< Guest-side timeout.
};

/// \brief Result of an `exec`.
struct ExecResult {
  int exit_code = -1;          ///< Exit code, or -signal.
  std::string stdout_data;     ///< Captured standard output (capped at 1 MiB).
  std::string stderr_data;     ///< Captured standard error (capped at 1 MiB).
  bool truncated = false;      ///< True when an output was capped.
};

/// \brief One Docker Engine API request, proxied by the guest agent to the guest's Docker socket (the `docker`
/// op). Docker's API is never exposed on a network interface; this is the only way in.
struct DockerRequest {
  std::string method = "GET";  ///< GET, POST, PUT, DELETE or HEAD.
  /// \brief Request target starting with "/", e.g. "/v1.41/containers/create?name=web". No spaces, CR or LF.
  std::string path;
  std::string body;  ///< Request body (JSON text), or empty for none.
  std::string socket = "/var/run/docker.sock";  ///< The guest's Docker socket (absolute path).
  std::chrono::milliseconds timeout{30000};     ///< Guest-side deadline for the whole exchange.
};

/// \brief The Docker daemon's answer to a DockerRequest.
struct DockerResponse {
  int status = 0;          ///< HTTP status code.
  std::string body;        ///< Response body (at most 1 MiB).
  bool truncated = false;  ///< True when the body was longer and was cut at 1 MiB.
};

/// \brief A launch spec for a parked container (the `launch` op, docs/guest-protocol.md): what its launcher
/// (fcwarm-launch) execs as the container's PID 1.
struct LaunchRequest {
  /// \brief The container's launch channel in the guest, "/run/fcwarm/parked/NAME".
  std::string channel;
  std::vector<std::string> argv;  ///< Program and arguments (looked up in the command's PATH); not empty.
  /// \brief The whole environment as "NAME=value" (later entries win); the launcher adds HOSTNAME (the VM's
  /// current hostname) first and PATH and HOME when missing.
  std::vector<std::string> env;
  std::string cwd;   ///< Absolute working directory (created when missing), or empty for "/".
  std::string user;  ///< "user[:group]" (names from the container's files, or numeric), or empty for root.
  /// \brief A file inside the container rewritten with the current hostname first ("/etc/hostname"), or empty.
  std::string hostname_file;
  /// \brief Guest-side deadline: for the launcher to be waiting, then for its execve(). Default: 5 s.
  std::chrono::milliseconds timeout{5000};
};

/// \brief Connection to the guest agent of one VM.
///
/// Thread safety: calls on one channel are serialized internally; it may be used from several threads.
class GuestChannel {
 public:
  virtual ~GuestChannel() = default;
  /// \brief Asks the agent for its identity; fails fast when the agent is not listening.
  /// \param timeout Deadline for the answer.
  /// \return The agent info, or Unavailable/DeadlineExceeded.
  virtual Result<GuestInfo> Ping(std::chrono::milliseconds timeout) = 0;
  /// \brief Makes the guest unique (hostname, network, entropy, clock).
  /// \param request What to set.
  /// \param timeout Deadline for the answer.
  /// \return What was set, or an error.
  virtual Result<IdentityResult> SetIdentity(const IdentityRequest& request,
                                             std::chrono::milliseconds timeout) = 0;
  /// \brief Runs the runtime readiness check once.
  /// \param check The check.
  /// \param timeout Deadline for the answer.
  /// \return The readiness (ready=false is not an error), or an error if the agent did not answer.
  virtual Result<RuntimeReadiness> RuntimeReady(const RuntimeCheck& check,
                                                std::chrono::milliseconds timeout) = 0;
  /// \brief Drops per-boot state before a snapshot.
  /// \param timeout Deadline for the answer.
  /// \return Ok or an error.
  virtual Status Quiesce(std::chrono::milliseconds timeout) = 0;
  /// \brief Runs a command in the guest.
  /// \param request The command.
  /// \param timeout Host-side deadline (should exceed the request's guest timeout).
  /// \return The result, or an error.
  virtual Result<ExecResult> Exec(const ExecRequest& request, std::chrono::milliseconds timeout) = 0;
  /// \brief Proxies one Docker Engine API request to the guest's Docker daemon.
  /// \param request The request.
  /// \param timeout Host-side deadline (should exceed the request's guest timeout).
  /// \return The daemon's answer (any HTTP status), Unavailable when the daemon cannot be reached, or
  /// FailedPrecondition when this channel has no Docker support (the default implementation).
  virtual Result<DockerResponse> Docker(const DockerRequest& request, std::chrono::milliseconds timeout) {
    (void)request;
    (void)timeout;
    return Status::FailedPrecondition("this guest channel does not proxy Docker API requests");
  }
  /// \brief Docker(), with the response body handed to `on_body` piece by piece while the daemon still
  /// sends it (an image pull's progress stream). The returned response carries the status; its body is
  /// empty (everything went to `on_body`); `truncated` says the body was cut (the default implementation's
  /// 1 MiB) or bytes were dropped because the reader fell behind.
  ///
  /// The default implementation calls Docker() and hands over the whole body at once; the agent channel
  /// streams (ops `docker_start`/`docker_read`, docs/guest-protocol.md) and falls back to that with an agent
  /// that predates them.
  /// \param request The request.
  /// \param on_body Receives the body in order; called on the calling thread.
  /// \param timeout Host-side deadline (should exceed the request's guest timeout).
  /// \return The daemon's status, or the errors of Docker().
  virtual Result<DockerResponse> DockerStream(const DockerRequest& request,
                                              const std::function<void(std::string_view)>& on_body,
                                              std::chrono::milliseconds timeout) {
    auto r = Docker(request, timeout);
    if (!r.ok()) return r;
    if (!r->body.empty()) on_body(r->body);
    r->body.clear();
    return r;
  }
  /// \brief Hands a launch spec to a parked container's launcher and waits until it exec'd the command.
  /// \param request The spec.
  /// \param timeout Host-side deadline (should exceed the request's guest timeout).
  /// \return Ok once the command runs as the container's PID 1; FailedPrecondition when nothing was delivered
  /// (no launcher waiting, an agent without the op, or this default implementation): the container is
  /// untouched; InvalidArgument with the launcher's message when the command could not start (the container
  /// then exits with 127); DeadlineExceeded or Unavailable otherwise.
  virtual Status Launch(const LaunchRequest& request, std::chrono::milliseconds timeout) {
    (void)request;
    (void)timeout;
    return Status::FailedPrecondition("this guest channel cannot launch parked containers");
  }
  /// \brief Tells whether a parked container's launcher waits on `channel` (the `launch` op's probe).
  /// \param channel "/run/fcwarm/parked/NAME".
  /// \param timeout Deadline for the answer.
  /// \return True when it waits; FailedPrecondition from the default implementation; an agent error.
  virtual Result<bool> LaunchWaiting(const std::string& channel, std::chrono::milliseconds timeout) {
    (void)channel;
    (void)timeout;
    return Status::FailedPrecondition("this guest channel cannot launch parked containers");
  }
};

/// \brief The network identity the core allocated to one VM.
struct NetworkIdentity {
  int64_t index = -1;     ///< Allocation index (unique among live VMs).
  std::string mac;        ///< Guest MAC, e.g. "02:fc:00:00:00:05".
  std::string ip_cidr;    ///< Guest address with prefix, e.g. "10.213.0.22/30".
  std::string gateway;    ///< Host-side address of the VM's link, e.g. "10.213.0.21".
  std::string hostname;   ///< Guest hostname.
  /// \brief What the guest may reach beyond the host (docs/networking.md): "all", "none" or "CIDR,...";
  /// empty: no egress rules, nothing is forwarded (the guest reaches its gateway link only). Backends apply it
  /// on the host side of the VM's link and remove it with the VM.
  std::string egress;
  /// \brief Addresses or CIDRs reachable under every egress policy (registry mirrors).
  std::vector<std::string> egress_allow;
  /// \brief IPv4 resolvers the guest may reach on port 53 under every egress policy.
  std::vector<std::string> dns;
  /// \brief CIDRs denied before `egress_allow` under every policy: the guest address pool (other VMs).
  std::vector<std::string> egress_deny;
  /// \brief Published ports, each "HOST_IP:HOST_PORT:GUEST_PORT/PROTO" with every part set (e.g.
  /// "127.0.0.1:8080:80/tcp"; docs/networking.md, "Published ports"): forwarded from the host to the guest's
  /// address while the VM runs. Backends publish them on the host side of the VM's link when the VM starts and
  /// remove them with it (stop, destroy, a failed start). Empty: nothing is published.
  std::vector<std::string> ports;
};

/// \brief Everything a backend needs to start one VM process.
struct LaunchSpec {
  std::string vm_id;        ///< The VM's id (UUID text; safe as a file name).
  RuntimeImage image;       ///< Kernel, initrd, base disk, boot args, shape.
  std::string work_dir;     ///< Existing empty directory owned by this VM (sockets, logs, overlay disk).
  /// \brief The VM's network identity. index < 0: the VM has no identity of its own (a snapshot build VM);
  /// backends still attach every device a clone will need, since devices cannot be added after a restore.
  NetworkIdentity network;
  /// \brief Called with the pid of every host process the backend starts for this VM, right after it starts,
  /// so the core can record it for crash reconciliation. May be empty.
  std::function<void(int pid)> on_process_started;
  /// \brief True: the VMM process may outlive the process that started it (it is not killed when its parent
  /// dies), so a later process can Vmm::Adopt() it (live restore, docs/operations.md). False (build VMs):
  /// it dies with its parent.
  bool outlive_owner = false;
};

/// \brief A running VMM process that an earlier process started, to be re-adopted (Vmm::Adopt).
struct AdoptTarget {
  int pid = -1;             ///< Its pid, as recorded when it started.
  uint64_t start_time = 0;  ///< Its start time (/proc/PID/stat field 22), which tells a reused pid apart.
};

/// \brief One running VM process (cold-booted or restored).
///
/// Destroying the object stops the VM (Stop with a short grace) if it was not stopped.
///
/// Thread safety: methods may be called from several threads; they are serialized internally.
class Vm {
 public:
  virtual ~Vm() = default;
  /// \brief The main VMM process id, or -1 when it is no longer running.
  virtual int pid() const = 0;
  /// \brief True while the VMM process is alive.
  virtual bool IsAlive() = 0;
  /// \brief The channel to the guest agent. Valid for the lifetime of this object.
  virtual GuestChannel& guest() = 0;
  /// \brief Pauses the vCPUs.
  /// \return Ok, or Unavailable when the VMM does not answer.
  virtual Status Pause() = 0;
  /// \brief Resumes the vCPUs.
  /// \return Ok, or Unavailable when the VMM does not answer.
  virtual Status Resume() = 0;
  /// \brief Writes a snapshot (memory, device state, disk) of the paused VM into `dir`.
  /// \param dir An existing empty directory; after success it holds every file a Restore needs.
  /// \return Ok or an error; on error `dir` may hold partial files (the caller removes it).
  virtual Status Snapshot(const std::string& dir) = 0;
  /// \brief Stops the VM: a graceful quit, SIGKILL after `grace`, always reaped; frees per-VM host
  /// resources the backend created (network namespace, TAP, sockets). Idempotent.
  /// \param grace Time allowed for a graceful exit.
  /// \return Ok, or an error describing what could not be released.
  virtual Status Stop(std::chrono::milliseconds grace) = 0;
  /// \brief Path of the serial console log, or empty.
  virtual std::string console_log() const = 0;
  /// \brief Lets go of the VM without stopping it: closes this object's connections to the VMM and the guest
  /// and forgets the host resources (network devices, rules, files) instead of releasing them, so a later
  /// process can Vmm::Adopt() the still running VM. The object is stopped afterwards (Stop() is a no-op).
  /// Only for a VM started with LaunchSpec::outlive_owner.
  /// \return Ok, or FailedPrecondition when this backend cannot hand VMs over (the default); the VM is then
  /// untouched.
  virtual Status Detach() { return Status::FailedPrecondition("this backend cannot leave VMs running"); }
};

/// \brief A VMM backend: starts VMs cold or from a snapshot.
///
/// Thread safety: implementations must allow concurrent ColdBoot/Restore calls.
class Vmm {
 public:
  virtual ~Vmm() = default;
  /// \brief Backend name as used in RuntimeImage::backend ("qemu", "firecracker", ...).
  virtual std::string Kind() const = 0;
  /// \brief Facts about this backend's VMM that a snapshot depends on, named `vmm.<name>`: binary version,
  /// snapshot format version, accelerator, machine type and the like. Part of the compatibility key; the
  /// library adds the host's own facts (`host.kernel`, `host.cpu`) and `vmm.kind` itself, so a backend does not
  /// report them (docs/architecture.md, "Manifest and compatibility key").
  /// \return Name/value pairs, or Unavailable when the VMM binary cannot be queried.
  virtual Result<std::map<std::string, std::string>> HostCompatibility() = 0;
  /// \brief Starts a VM from the image's kernel. Returns once the VMM process runs (not when the guest is
  /// ready: the caller waits on the guest channel).
  /// \param spec What to start.
  /// \return The running VM, or an error (nothing is left running on error).
  virtual Result<std::unique_ptr<Vm>> ColdBoot(const LaunchSpec& spec) = 0;
  /// \brief Starts a fresh VMM process from the snapshot in `snapshot_dir` and resumes it. The clone gets its
  /// own writable disk and network from `spec`; files in `snapshot_dir` are never modified.
  /// \param spec What to start (same image and shape as the snapshot).
  /// \param snapshot_dir A published generation directory.
  /// \return The running clone, or an error (nothing is left running on error).
  virtual Result<std::unique_ptr<Vm>> Restore(const LaunchSpec& spec, const std::string& snapshot_dir) = 0;
  /// \brief Re-adopts a VM that an earlier process started with `spec` and left running (live restore): checks
  /// that `target` is still that VMM process (start time, arguments, control socket, running state),
  /// reconnects to it, and re-creates the host-side state a restart may have lost (the VM's egress rules and
  /// published ports, when they are missing). Does not talk to the guest; the caller pings it.
  /// \param spec The VM's launch spec as it was started (id, image, work directory, network identity).
  /// \param target Its VMM process.
  /// \return The VM, or FailedPrecondition saying why it cannot be adopted (the process is gone, is another
  /// process, or this backend cannot adopt: the default). On error nothing was changed: the caller decides
  /// what to release.
  virtual Result<std::unique_ptr<Vm>> Adopt(const LaunchSpec& spec, const AdoptTarget& target) {
    (void)spec;
    (void)target;
    return Status::FailedPrecondition("backend '" + Kind() + "' cannot adopt running VMs");
  }
};

/// \brief The set of available backends, by Kind().
///
/// Thread safety: Add() and Find() may be called concurrently.
class VmmRegistry {
 public:
  /// \brief Adds (or replaces) a backend.
  /// \param vmm The backend.
  void Add(std::shared_ptr<Vmm> vmm);
  /// \brief Finds a backend by name.
  /// \param kind The backend name.
  /// \return The backend or nullptr.
  std::shared_ptr<Vmm> Find(std::string_view kind) const;
  /// \brief Names of the registered backends.
  std::vector<std::string> Kinds() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Vmm>, std::less<>> vmms_;
};

}  // namespace fcwarm
