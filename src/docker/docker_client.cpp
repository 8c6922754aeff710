#include "docker/docker_client.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <map>

#include "fcwarm/image_reference.hpp"

namespace fcwarm::docker {
namespace json = boost::json;

namespace {

constexpr size_t kFrameHeader = 8;

// A TTY container's output: one raw stream.
Output Raw(std::string_view body, bool truncated) {
  Output out;
  out.stdout_data = std::string(body);
  out.truncated = truncated;
  return out;
}

size_t BigEndian32(std::string_view b) {
  size_t n = 0;
  for (size_t i = 0; i < 4; ++i) n = (n << 8) | static_cast<unsigned char>(b[i]);
  return n;
}

// The body as a JSON object, or null.
const json::object* ParseObject(const std::string& body, json::value& storage) {
  boost::system::error_code ec;
  storage = json::parse(body, ec);
  return !ec && storage.is_object() ? &storage.as_object() : nullptr;
}

std::string StringField(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

}  // namespace

// ---- transport ----------------------------------------------------------------

GuestTransport::GuestTransport(GuestChannel& guest, std::chrono::milliseconds margin)
    : guest_(guest), margin_(margin) {}

Result<DockerResponse> GuestTransport::RoundTrip(const DockerRequest& request) {
  return guest_.Docker(request, request.timeout + margin_);
}

Result<DockerResponse> GuestTransport::RoundTripStream(const DockerRequest& request,
                                                       const std::function<void(std::string_view)>& on_body) {
  return guest_.DockerStream(request, on_body, request.timeout + margin_);
}

Result<DockerResponse> Transport::RoundTripStream(const DockerRequest& request,
                                                  const std::function<void(std::string_view)>& on_body) {
  auto r = RoundTrip(request);
  if (!r.ok()) return r;
  if (!r->body.empty()) on_body(r->body);
  r->body.clear();
  return r;
}

// ---- replies ------------------------------------------------------------------

Output Demultiplex(std::string_view body, bool truncated) {
  Output out;
  out.truncated = truncated;
  size_t i = 0;
  while (i < body.size()) {
    if (body.size() - i < kFrameHeader) {
      if (i == 0) return Raw(body, truncated);  // too short to be a frame
      break;                                    // a header cut off by truncation
    }
    auto stream = static_cast<unsigned char>(body[i]);
    if (stream > 2 || body[i + 1] != 0 || body[i + 2] != 0 || body[i + 3] != 0) return Raw(body, truncated);
    size_t size = BigEndian32(body.substr(i + 4, 4));
    size_t take = std::min(size, body.size() - i - kFrameHeader);
    (stream == 2 ? out.stderr_data : out.stdout_data).append(body.substr(i + kFrameHeader, take));
    i += kFrameHeader + take;
  }
  return out;
}

std::string ErrorMessage(const DockerResponse& reply) {
  json::value v;
  if (const auto* o = ParseObject(reply.body, v)) {
    if (const auto* m = o->if_contains("message"); m && m->is_string()) return std::string(m->as_string());
  }
  std::string b = reply.body.substr(0, 200);
  for (auto& c : b)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return b;
}

namespace {
// A progress line is short; a longer one is dropped (never buffered without bound).
constexpr size_t kMaxPullLineBytes = 64 * 1024;
}  // namespace

void PullStreamParser::Feed(std::string_view bytes) {
  while (!bytes.empty()) {
    size_t nl = bytes.find('\n');
    std::string_view piece = bytes.substr(0, nl);
    if (!skipping_) {
      if (partial_.size() + piece.size() > kMaxPullLineBytes) {
        skipping_ = true;
        partial_.clear();
      } else {
        partial_.append(piece);
      }
    }
    if (nl == std::string_view::npos) break;
    if (!skipping_) Line(partial_);
    partial_.clear();
    skipping_ = false;
    bytes.remove_prefix(nl + 1);
  }
}

void PullStreamParser::Line(std::string_view line) {
  if (!error_.ok()) return;  // the stream ended at its error
  boost::system::error_code ec;
  auto v = json::parse(line, ec);
  if (ec || !v.is_object()) return;  // a blank line, or one cut short
  const auto& o = v.as_object();
  std::string error = StringField(o, "error");
  if (const auto* d = o.if_contains("errorDetail"); error.empty() && d && d->is_object()) {
    error = StringField(d->as_object(), "message");
  }
  if (!error.empty()) {
    error_ = Status::Unavailable("docker pull: " + error);
    return;
  }
  std::string status = StringField(o, "status");
  std::string id = StringField(o, "id");
  if (status.rfind("Status: ", 0) == 0) {
    complete_ = true;
    return;
  }
  if (id.empty()) return;
  auto detail = [&](const char* key) -> int64_t {
    if (const auto* d = o.if_contains("progressDetail"); d && d->is_object()) {
      if (const auto* t = d->as_object().if_contains(key); t && t->is_int64()) return t->as_int64();
    }
    return 0;
  };
  if (status == "Pulling fs layer") {
    layers_.try_emplace(id);
  } else if (status == "Downloading") {
    auto& l = layers_[id];
    l.total = std::max(l.total, detail("total"));
    l.current = std::max(l.current, detail("current"));
  } else if (status == "Download complete" || status == "Verifying Checksum") {
    auto& l = layers_[id];
    l.current = std::max(l.current, l.total);
  } else if (status == "Pull complete") {
    auto& l = layers_[id];
    l.current = std::max(l.current, l.total);
    l.pulled = true;
  } else {
    return;  // "Already exists", "Waiting", "Extracting", ...: nothing that counts
  }
  PullProgress p;
  for (const auto& [lid, l] : layers_) {
    p.layers_total++;
    p.layers += l.pulled ? 1 : 0;
    p.bytes += std::min(l.current, l.total > 0 ? l.total : l.current);
    p.bytes_total += l.total;
  }
  progress_ = p;
}

Result<PullSummary> PullStreamParser::Finish() {
  if (!skipping_ && !partial_.empty()) Line(partial_);
  partial_.clear();
  if (!error_.ok()) return error_;
  PullSummary out;
  out.complete = complete_;
  for (const auto& [id, l] : layers_) {
    if (!l.pulled) continue;
    out.layers++;
    out.bytes += l.total;
  }
  return out;
}

Result<PullSummary> ParsePullStream(std::string_view body) {
  PullStreamParser p;
  p.Feed(body);
  return p.Finish();
}

// ---- client -------------------------------------------------------------------

Client::Client(std::unique_ptr<Transport> transport, ClientOptions options)
    : transport_(std::move(transport)), options_(std::move(options)) {}

Result<DockerResponse> Client::Call(std::string_view call, const std::string& method, const std::string& path,
                                    std::string body) {
  DockerRequest r;
  r.method = method;
  r.path = "/" + options_.api_version + path;
  r.body = std::move(body);
  r.timeout = options_.timeout;
  r.socket = options_.socket;
  auto reply = transport_->RoundTrip(r);
  if (!reply.ok()) return reply.status().WithContext("docker " + std::string(call));
  return reply;
}

Status Client::HttpError(std::string_view call, const DockerResponse& reply, Blame blame) {
  std::string msg =
      "docker " + std::string(call) + ": HTTP " + std::to_string(reply.status) + ": " + ErrorMessage(reply);
  if (blame == Blame::kDaemon || reply.status >= 500) return Status::Unavailable(std::move(msg));
  return reply.status == 404 ? Status::NotFound(std::move(msg)) : Status::InvalidArgument(std::move(msg));
}

Status Client::CheckId(std::string_view call, const std::string& id) {
  bool ok = !id.empty() && id.size() <= 128;
  for (char c : id) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                c == '.' || c == '-');
  }
  if (ok) return Status::Ok();
  return Status::InvalidArgument("docker " + std::string(call) + ": '" + id.substr(0, 64) +
                                 "' is not a container id or name");
}

Result<std::string> Client::Create(const ContainerConfig& config) {
  json::object spec;
  spec["Image"] = config.image;
  if (config.entrypoint) spec["Entrypoint"] = json::value_from(*config.entrypoint);
  if (!config.cmd.empty()) spec["Cmd"] = json::value_from(config.cmd);
  spec["Env"] = json::value_from(config.env);
  if (!config.working_dir.empty()) spec["WorkingDir"] = config.working_dir;
  if (!config.user.empty()) spec["User"] = config.user;
  spec["Labels"] = json::value_from(config.labels);
  json::object host;
  if (!config.network_mode.empty()) host["NetworkMode"] = config.network_mode;
  if (!config.uts_mode.empty()) host["UTSMode"] = config.uts_mode;
  if (!config.binds.empty()) host["Binds"] = json::value_from(config.binds);
  if (config.read_only) host["ReadonlyRootfs"] = true;
  if (!host.empty()) spec["HostConfig"] = std::move(host);
  std::string path = "/containers/create";
  if (!config.name.empty()) {
    if (auto st = CheckId("create", config.name); !st.ok()) return st;
    path += "?name=" + config.name;
  }
  auto reply = Call("create", "POST", path, json::serialize(spec));
  if (!reply.ok()) return reply.status();
  if (reply->status != 201) return HttpError("create", *reply, Blame::kRequest);
  json::value v;
  const auto* o = ParseObject(reply->body, v);
  std::string id = o ? StringField(*o, "Id") : "";
  if (id.size() < 12 || id.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return Status::Unavailable("docker create: reply has no container Id: " + ErrorMessage(*reply));
  }
  return id;
}

Result<DockerResponse> Client::CallOn(std::string_view call, const std::string& method, const std::string& id,
                                      const std::string& action, std::initializer_list<int> expected) {
  if (auto st = CheckId(call, id); !st.ok()) return st;
  auto reply = Call(call, method, "/containers/" + id + "/" + action);
  if (!reply.ok()) return reply;
  if (std::find(expected.begin(), expected.end(), reply->status) == expected.end()) {
    return HttpError(call, *reply, Blame::kDaemon);
  }
  return reply;
}

Status Client::Rename(const std::string& id, const std::string& name) {
  if (auto st = CheckId("rename", name); !st.ok()) return st;
  return CallOn("rename", "POST", id, "rename?name=" + name, {204}).status();
}

Status Client::Remove(const std::string& id) {
  if (auto st = CheckId("remove", id); !st.ok()) return st;
  auto reply = Call("remove", "DELETE", "/containers/" + id + "?force=1");
  if (!reply.ok()) return reply.status();
  if (reply->status != 204 && reply->status != 404) return HttpError("remove", *reply, Blame::kDaemon);
  return Status::Ok();
}

Result<ImageConfig> Client::InspectImage(const std::string& reference) {
  auto ref = ParseImageReference(reference, "image");
  if (!ref.ok()) return ref.status().WithContext("docker image inspect");
  auto reply = Call("image inspect", "GET", "/images/" + ref->str() + "/json");
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) return HttpError("image inspect", *reply, Blame::kRequest);
  json::value v;
  const auto* o = ParseObject(reply->body, v);
  const auto* config = o ? o->if_contains("Config") : nullptr;
  if (!config || !config->is_object()) return Status::Unavailable("docker image inspect: reply has no Config object");
  const auto& c = config->as_object();
  auto strings = [&](std::string_view key) {
    std::vector<std::string> out;
    if (const auto* a = c.if_contains(key); a && a->is_array()) {
      for (const auto& e : a->as_array())
        if (e.is_string()) out.emplace_back(e.as_string());
    }
    return out;
  };
  ImageConfig out;
  out.entrypoint = strings("Entrypoint");
  out.cmd = strings("Cmd");
  out.env = strings("Env");
  out.working_dir = StringField(c, "WorkingDir");
  out.user = StringField(c, "User");
  return out;
}

Status Client::Start(const std::string& id) {
  return CallOn("start", "POST", id, "start", {204, 304}).status();
}

Result<ContainerStatus> Client::Inspect(const std::string& id) {
  auto reply = CallOn("inspect", "GET", id, "json", {200});
  if (!reply.ok()) return reply.status();
  json::value v;
  const auto* o = ParseObject(reply->body, v);
  const auto* state = o ? o->if_contains("State") : nullptr;
  if (!state || !state->is_object()) return Status::Unavailable("docker inspect: reply has no State object");
  ContainerStatus out;
  out.status = StringField(state->as_object(), "Status");
  if (const auto* x = state->as_object().if_contains("ExitCode"); x && x->is_int64()) {
    out.exit_code = static_cast<int>(x->as_int64());
  }
  return out;
}

Result<Output> Client::Logs(const std::string& id) {
  auto reply = CallOn("logs", "GET", id, "logs?stdout=1&stderr=1", {200});
  if (!reply.ok()) return reply.status();
  return Demultiplex(reply->body, reply->truncated);
}

Status Client::Stop(const std::string& id, std::chrono::seconds grace) {
  return CallOn("stop", "POST", id, "stop?t=" + std::to_string(grace.count()), {204, 304}).status();
}

Result<int> Client::Wait(const std::string& id) {
  auto reply = CallOn("wait", "POST", id, "wait?condition=not-running", {200});
  if (!reply.ok()) return reply.status();
  json::value v;
  const auto* o = ParseObject(reply->body, v);
  const auto* code = o ? o->if_contains("StatusCode") : nullptr;
  if (!code || !code->is_int64()) return Status::Unavailable("docker wait: reply has no StatusCode");
  if (const auto* err = o->if_contains("Error"); err && err->is_object()) {
    if (auto msg = StringField(err->as_object(), "Message"); !msg.empty()) {
      return Status::Unavailable("docker wait: " + msg);
    }
  }
  return static_cast<int>(code->as_int64());
}

Result<bool> Client::HasImage(const std::string& reference) {
  auto ref = ParseImageReference(reference, "image");
  if (!ref.ok()) return ref.status().WithContext("docker image inspect");
  auto reply = Call("image inspect", "GET", "/images/" + ref->str() + "/json");
  if (!reply.ok()) return reply.status();
  if (reply->status == 404) return false;
  if (reply->status != 200) return HttpError("image inspect", *reply, Blame::kDaemon);
  return true;
}

Result<PullSummary> Client::Pull(const std::string& reference,
                                 const std::function<void(const PullProgress&)>& on_progress) {
  auto ref = ParseImageReference(reference, "image");
  if (!ref.ok()) return ref.status().WithContext("docker pull");
  // Every character of a valid reference is allowed as is in a query ([a-z0-9._/:@-], tags [A-Za-z0-9_.-]).
  std::string name = ref->domain.empty() ? ref->path : ref->domain + "/" + ref->path;
  std::string tag = !ref->digest.empty() ? ref->digest : (ref->tag.empty() ? "latest" : ref->tag);
  DockerRequest r;
  r.method = "POST";
  r.path = "/" + options_.api_version + "/images/create?fromImage=" + name + "&tag=" + tag;
  r.timeout = options_.timeout;
  r.socket = options_.socket;
  PullStreamParser parser;
  std::string start;  // the first bytes, for the message of an error status
  auto on_body = [&](std::string_view piece) {
    if (start.size() < 4096) start.append(piece.substr(0, 4096 - start.size()));
    PullProgress before = parser.progress();
    parser.Feed(piece);
    if (on_progress && !(parser.progress() == before)) on_progress(parser.progress());
  };
  auto reply = transport_->RoundTripStream(r, on_body);
  if (!reply.ok()) return reply.status().WithContext("docker pull");
  if (reply->status != 200) {
    reply->body = std::move(start);
    return HttpError("pull", *reply, reply->status == 404 ? Blame::kRequest : Blame::kDaemon);
  }
  return parser.Finish();
}

Result<PullSummary> Client::PullChecked(const std::string& reference,
                                        const std::function<void(const PullProgress&)>& on_progress) {
  auto pulled = Pull(reference, on_progress);
  if (!pulled.ok() || pulled->complete) return pulled;
  auto has = HasImage(reference);
  if (!has.ok()) return has.status();
  if (!*has)
    return Status::Unavailable("docker pull: the daemon ended the pull of " + reference +
                               " without the image");
  return pulled;
}

Result<std::vector<std::string>> Client::ListImages() {
  auto reply = Call("image list", "GET", "/images/json");
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) return HttpError("image list", *reply, Blame::kDaemon);
  if (reply->truncated) return Status::Unavailable("docker image list: the reply was cut short");
  boost::system::error_code ec;
  auto v = json::parse(reply->body, ec);
  if (ec || !v.is_array()) return Status::Unavailable("docker image list: the reply is not a JSON array");
  std::vector<std::string> out;
  auto strings = [](const json::object& o, std::string_view key) {
    std::vector<std::string> s;
    if (const auto* a = o.if_contains(key); a && a->is_array()) {
      for (const auto& e : a->as_array()) {
        if (e.is_string() && e.as_string() != "<none>:<none>" && e.as_string() != "<none>@<none>") {
          s.emplace_back(e.as_string());
        }
      }
    }
    return s;
  };
  for (const auto& image : v.as_array()) {
    if (!image.is_object()) continue;
    auto tags = strings(image.as_object(), "RepoTags");
    if (tags.empty()) tags = strings(image.as_object(), "RepoDigests");
    out.insert(out.end(), tags.begin(), tags.end());
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace fcwarm::docker
