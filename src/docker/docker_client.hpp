// Private: a Docker Engine API client, the subset ContainerManager needs (create, start, inspect, logs, stop,
// wait). It builds each request (method, "/<version>/..." path, JSON body), sends it through a Transport and
// turns the reply into a value or a Status that carries Docker's own message.
//
// Thread safety: a Client is used by one thread at a time; distinct clients are independent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm::docker {

/// Carries one request to a Docker daemon and brings back its answer.
class Transport {
 public:
  virtual ~Transport() = default;
  /// \return The daemon's answer, whatever its HTTP status; an error when the daemon could not be reached.
  virtual Result<DockerResponse> RoundTrip(const DockerRequest& request) = 0;
  /// RoundTrip() with the body handed to `on_body` as it arrives (GuestChannel::DockerStream). The default
  /// calls RoundTrip() and hands over the whole body at once. \return The answer with an empty body.
  virtual Result<DockerResponse> RoundTripStream(const DockerRequest& request,
                                                 const std::function<void(std::string_view)>& on_body);
};

/// The transport into a VM: the guest agent's `docker` op. The host waits for the request's own deadline
/// plus `margin` (the agent enforces the request's deadline; the margin covers the channel).
class GuestTransport : public Transport {
 public:
  /// \param guest The VM's channel; must outlive the transport.
  explicit GuestTransport(GuestChannel& guest, std::chrono::milliseconds margin = std::chrono::seconds(5));
  Result<DockerResponse> RoundTrip(const DockerRequest& request) override;
  Result<DockerResponse> RoundTripStream(const DockerRequest& request,
                                         const std::function<void(std::string_view)>& on_body) override;

 private:
  GuestChannel& guest_;
  std::chrono::milliseconds margin_;
};

/// What Create() makes.
struct ContainerConfig {
  std::string name;                           ///< Container name (`?name=`), or empty for Docker's choice.
  std::string image;                          ///< Image reference, e.g. "busybox:latest".
  /// Entrypoint; unset: the image's. Set (even empty), the image's Cmd is not used either.
  std::optional<std::vector<std::string>> entrypoint;
  std::vector<std::string> cmd;               ///< Command; empty: the image's default.
  std::vector<std::string> env;               ///< "NAME=value" entries.
  std::string working_dir;                    ///< Config.WorkingDir, or empty for the image's.
  std::string user;                           ///< Config.User, or empty for the image's.
  std::map<std::string, std::string> labels;  ///< Container labels.
  std::string network_mode;                   ///< HostConfig.NetworkMode, or empty for the daemon's default.
  std::string uts_mode;                       ///< HostConfig.UTSMode ("host"), or empty for its own.
  std::vector<std::string> binds;             ///< HostConfig.Binds, "SRC:DST[:ro]".
  bool read_only = false;                     ///< HostConfig.ReadonlyRootfs.
};

/// What InspectImage() reports: the image's defaults for a container (its Config).
struct ImageConfig {
  std::vector<std::string> entrypoint;  ///< Config.Entrypoint (empty when none).
  std::vector<std::string> cmd;         ///< Config.Cmd (empty when none).
  std::vector<std::string> env;         ///< Config.Env, "NAME=value".
  std::string working_dir;              ///< Config.WorkingDir, or empty.
  std::string user;                     ///< Config.User, or empty.
};

/// What Inspect() reports about a container's process.
struct ContainerStatus {
  std::string status;  ///< State.Status: "created", "running", "exited", "dead", ...
  int exit_code = -1;  ///< State.ExitCode (-1 when the reply has none).
  /// True once the process is gone ("exited" or "dead").
  bool Exited() const { return status == "exited" || status == "dead"; }
};

/// A container's output.
struct Output {
  std::string stdout_data;
  std::string stderr_data;
  bool truncated = false;  ///< The reply was cut (at the transport's limit).
};

/// Splits a logs reply. Without a TTY Docker multiplexes the two streams in frames of an 8-byte header
/// ([stream: 0 stdin, 1 stdout, 2 stderr], 0, 0, 0, payload size as 32-bit big-endian) and the payload; a
/// frame cut short at the end (a truncated reply) keeps what arrived. A body that does not parse as frames
/// is a TTY container's single raw stream and is returned as stdout.
Output Demultiplex(std::string_view body, bool truncated);

/// The error text of a Docker reply: its JSON `message`, else the start of the body (at most 200 bytes,
/// control characters blanked).
std::string ErrorMessage(const DockerResponse& reply);

/// What a finished image pull took.
struct PullSummary {
  int layers = 0;      ///< Layers downloaded ("Pull complete"); layers the daemon had ("Already exists") are not.
  int64_t bytes = 0;   ///< Their compressed sizes as the registry announced them (the progress totals).
  bool complete = false;  ///< The stream ended with Docker's final "Status: ..." line.
};

/// How far a running pull got, from its progress stream so far.
struct PullProgress {
  int layers = 0;           ///< Layers pulled so far ("Pull complete").
  int layers_total = 0;     ///< Layers this pull downloads ("Pulling fs layer"), as far as announced yet.
  int64_t bytes = 0;        ///< Compressed bytes downloaded so far (a finished layer counts its whole size).
  int64_t bytes_total = 0;  ///< Announced sizes of the layers whose download started; grows as layers start.
  bool operator==(const PullProgress&) const = default;
};

/// Reads the progress stream of POST /images/create (one JSON object per line) piece by piece, as it
/// arrives. Docker answers HTTP 200 and reports a failure inside the stream: the first object with an
/// `error` (or `errorDetail.message`) ends it as Unavailable "docker pull: <Docker's message>".
class PullStreamParser {
 public:
  /// Adds the next bytes of the stream (lines may be split anywhere).
  void Feed(std::string_view bytes);
  /// What the stream said so far.
  const PullProgress& progress() const { return progress_; }
  /// Ends the stream (a last line without a newline is read too). \return The summary; complete == false
  /// when the final "Status: ..." line never came (a stream cut short); Docker's error.
  Result<PullSummary> Finish();

 private:
  struct Layer {
    int64_t current = 0, total = 0;
    bool pulled = false;
  };
  void Line(std::string_view line);
  std::string partial_;
  bool skipping_ = false;  // inside a line longer than the cap, dropped up to its newline
  std::map<std::string, Layer> layers_;
  PullProgress progress_;
  Status error_;
  bool complete_ = false;
};

/// The whole progress stream at once (PullStreamParser). A body cut short (`truncated`) or without the
/// final status line gives a summary with complete == false (the caller checks the image instead).
Result<PullSummary> ParsePullStream(std::string_view body);

/// Options of a Client.
struct ClientOptions {
  /// \brief Engine API version in request paths. Default: "v1.41" (Docker 20.10).
  std::string api_version = "v1.41";
  /// \brief Deadline of one request, sent with it. Default: 60 s.
  std::chrono::milliseconds timeout{60000};
  /// \brief The daemon's socket in the guest. Default: "/var/run/docker.sock".
  std::string socket = "/var/run/docker.sock";
};

/// Calls of the Engine API. Every error message starts with "docker <call>: ". A transport error keeps its
/// code; an unexpected HTTP status of Create() is NotFound (404, e.g. no such image), InvalidArgument (other
/// 4xx) or Unavailable (5xx); of every other call (they name a container this client created) Unavailable.
class Client {
 public:
  /// \param transport Where requests go.
  Client(std::unique_ptr<Transport> transport, ClientOptions options);

  /// POST /containers/create. \return Docker's container id (hex).
  Result<std::string> Create(const ContainerConfig& config);
  /// POST /containers/{id}/rename?name=NAME (`name` like an id: [A-Za-z0-9_.-]).
  Status Rename(const std::string& id, const std::string& name);
  /// DELETE /containers/{id}?force=1 (a missing container is not an error).
  Status Remove(const std::string& id);
  /// GET /images/{reference}/json: the image's Config. NotFound when the daemon does not have it.
  Result<ImageConfig> InspectImage(const std::string& reference);
  /// POST /containers/{id}/start (starting a running container is not an error).
  Status Start(const std::string& id);
  /// GET /containers/{id}/json.
  Result<ContainerStatus> Inspect(const std::string& id);
  /// GET /containers/{id}/logs with stdout and stderr, demultiplexed.
  Result<Output> Logs(const std::string& id);
  /// POST /containers/{id}/stop: SIGTERM, SIGKILL after `grace` (stopping a stopped container is not an
  /// error).
  Status Stop(const std::string& id, std::chrono::seconds grace);
  /// POST /containers/{id}/wait until the container is not running. \return Its exit code.
  Result<int> Wait(const std::string& id);
  /// GET /images/{reference}/json. \return True when the daemon has the image, false when it answers 404.
  Result<bool> HasImage(const std::string& reference);
  /// POST /images/create?fromImage=NAME&tag=TAG (or the digest): the daemon pulls the image through the VM's
  /// network, from its registry mirrors first for Docker Hub images. `reference` must be valid
  /// (ParseImageReference); without a tag or digest "latest" is pulled. \return What the pull took; Docker's
  /// error (ParsePullStream), or InvalidArgument for a malformed reference.
  /// \param on_progress Called on this thread whenever the progress changed while the stream arrives.
  Result<PullSummary> Pull(const std::string& reference,
                           const std::function<void(const PullProgress&)>& on_progress = {});
  /// Pull(), and when its progress stream was cut short (complete == false), HasImage() to believe the daemon
  /// rather than the stream. \return What the pull took; Unavailable "docker pull: ..." when the daemon ended
  /// without the image.
  Result<PullSummary> PullChecked(const std::string& reference,
                                  const std::function<void(const PullProgress&)>& on_progress = {});
  /// GET /images/json: the daemon's images by name. \return Every repository tag ("nginx:alpine"), and for an
  /// image without a tag its repository digests ("nginx@sha256:..."), sorted and unique; Unavailable when the
  /// reply is not a JSON array or was cut short.
  Result<std::vector<std::string>> ListImages();

 private:
  // Who an unexpected HTTP status blames: the request's content (Create) or the daemon.
  enum class Blame { kRequest, kDaemon };
  // Sends one request; a transport error gets the call's name as context.
  Result<DockerResponse> Call(std::string_view call, const std::string& method, const std::string& path,
                              std::string body = "");
  // A call about container `id` (POST/GET /containers/{id}/{action}); a status not in `expected` is an
  // error blamed on the daemon.
  Result<DockerResponse> CallOn(std::string_view call, const std::string& method, const std::string& id,
                                const std::string& action, std::initializer_list<int> expected);
  // "docker <call>: HTTP <status>: <Docker's message>" with the code `blame` implies.
  static Status HttpError(std::string_view call, const DockerResponse& reply, Blame blame);
  // Refuses ids that would change the request path.
  static Status CheckId(std::string_view call, const std::string& id);

  std::unique_ptr<Transport> transport_;
  ClientOptions options_;
};

}  // namespace fcwarm::docker
