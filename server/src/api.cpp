#include "api.hpp"

#include <set>

#include "codec.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/time_format.hpp"
#include "fcwarm/version.hpp"

namespace fcwarm::server {
namespace json = boost::json;

namespace {

HttpResponse JsonResponse(int status, const json::value& v) {
  HttpResponse r;
  r.status = status;
  r.body = Serialize(v);
  return r;
}

// One resource: its fields at the top level and the same object under "item" (docs/api.md, "Responses"):
// the quick start reads both `.item.boot_method` and `{state, success_count, failure_count}`.
HttpResponse ItemResponse(int status, json::object item) {
  json::object out = item;
  out["item"] = std::move(item);
  return JsonResponse(status, out);
}

HttpResponse Invalid(const std::string& message) { return StatusResponse(Status::InvalidArgument(message)); }

// Rejects query parameters a route does not know.
Status CheckQuery(const Target& t, std::initializer_list<std::string_view> allowed) {
  for (const auto& [k, v] : t.query) {
    bool ok = false;
    for (auto a : allowed) ok = ok || k == a;
    if (!ok) {
      std::string shown;
      for (unsigned char c : k.substr(0, 64)) shown += (c < 0x20 || c >= 0x7f) ? '?' : static_cast<char>(c);
      return Status::InvalidArgument(shown + ": unknown query parameter");
    }
  }
  return Status::Ok();
}

Result<bool> QueryBool(const Target& t, const std::string& key, bool def) {
  auto it = t.query.find(key);
  if (it == t.query.end()) return def;
  if (it->second == "true" || it->second == "1") return true;
  if (it->second == "false" || it->second == "0") return false;
  return Status::InvalidArgument(key + ": must be true or false");
}

Result<int64_t> QueryInt(const Target& t, const std::string& key, int64_t def, int64_t min, int64_t max) {
  auto it = t.query.find(key);
  if (it == t.query.end()) return def;
  const std::string& s = it->second;
  if (s.empty() || s.size() > 18) return Status::InvalidArgument(key + ": must be an integer");
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return Status::InvalidArgument(key + ": must be a non-negative integer");
    v = v * 10 + (c - '0');
  }
  if (v < min || v > max) {
    return Status::InvalidArgument(key + ": " + s + " is outside " + std::to_string(min) + "-" +
                                   std::to_string(max));
  }
  return v;
}

// A body that must be absent, empty or an empty object (POST actions without parameters).
Status CheckNoBody(const HttpRequest& req) {
  bool blank = true;
  for (char c : req.body) blank = blank && (c == ' ' || c == '\t' || c == '\r' || c == '\n');
  if (blank) return Status::Ok();
  auto obj = ParseBodyObject(req.body);
  if (!obj.ok()) return obj.status();
  ObjectReader r(*obj);
  return r.Finish();
}

}  // namespace

HttpResponse StatusResponse(const Status& st) {
  return ErrorResponse(HttpStatusOf(st), StatusCodeName(st.code()), st.message());
}

Api::Api(Service& service, ContainerService& containers, ApiOptions options, const ServerStats* stats)
    : service_(service),
      containers_(containers),
      options_(std::move(options)),
      stats_(stats),
      metrics_(service) {}

bool Api::TokenMatches(std::string_view presented, std::string_view expected) {
  // Runs in time that depends only on the expected token's length.
  unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    diff |= static_cast<unsigned char>(p ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

HttpResponse Api::Handle(const HttpRequest& req) {
  auto target = ParseTarget(req.target);
  if (!target.ok()) return StatusResponse(target.status());
  RouteMatch m = MatchRoute(req.method, target->segments);

  if (!options_.auth_token.empty() && m.requires_auth) {
    const std::string* auth = req.Header("authorization");
    std::string_view presented;
    bool scheme_ok = false;
    if (auth && auth->size() > 7 && ToLowerAscii(auth->substr(0, 7)) == "bearer ") {
      presented = std::string_view(*auth).substr(7);
      while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
      scheme_ok = true;
    }
    if (!scheme_ok || !TokenMatches(presented, options_.auth_token)) {
      auto r = ErrorResponse(
          401, "unauthenticated",
          auth ? "the bearer token is not valid" : "an Authorization: Bearer token is required");
      r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"fcwarm\"");
      return r;
    }
  }
  if (m.kind == RouteMatch::Kind::kNotFound) {
    std::string path;
    for (const auto& seg : target->segments) path += "/" + seg;
    if (path.empty()) path = "/";
    return ErrorResponse(404, "not_found", "no such endpoint: " + req.method + " " + path.substr(0, 200));
  }
  if (m.kind == RouteMatch::Kind::kMethodNotAllowed) {
    auto r = ErrorResponse(405, "method_not_allowed",
                           "method " + req.method + " is not allowed here (allowed: " + m.allow + ")");
    r.headers.emplace_back("Allow", m.allow);
    return r;
  }
  // Bodies are parsed as JSON whatever the Content-Type says (`curl -d` sends form-urlencoded).
  // Path parameters are ids: validate once, naming the field.
  for (const auto& p : m.params) {
    auto id = Id::Parse(m.param_name, p);
    if (!id.ok()) return StatusResponse(id.status());
  }
  try {
    return Dispatch(req, m, *target);
  } catch (const std::exception& e) {
    return StatusResponse(Status::Internal(std::string("unexpected error: ") + e.what()));
  }
}

HttpResponse Api::Dispatch(const HttpRequest& req, const RouteMatch& m, const Target& t) {
  const std::string id = m.params.empty() ? std::string() : m.params[0];
  bool get = req.method == "GET";
  bool del = req.method == "DELETE";
  Status q;
  if (m.route == RouteId::kSnapshots && get) {
    q = CheckQuery(t, {"runtime_image_id", "state", "include_deleted"});
  } else if (m.route == RouteId::kEvents) {
    q = CheckQuery(t, {"after", "limit", "kind", "runtime_image_id", "snapshot_id"});
  } else if (m.route == RouteId::kContainers && get) {
    q = CheckQuery(t, {"include_destroyed"});
  } else if (m.route == RouteId::kContainerWait) {
    q = CheckQuery(t, {"timeout_ms"});
  } else {
    q = CheckQuery(t, {});
  }
  if (!q.ok()) return StatusResponse(q);

  switch (m.route) {
    case RouteId::kHealthz:
      return Healthz();
    case RouteId::kMetrics:
      return Metrics();
    case RouteId::kVersion:
      return Version();
    case RouteId::kSnapshots:
      return get ? ListSnapshots(t) : CreateSnapshot(req);
    case RouteId::kSnapshot:
      return del ? DeleteSnapshot(id) : GetSnapshot(id);
    case RouteId::kSnapshotRebuild:
      return RebuildSnapshot(req, id);
    case RouteId::kImages:
      return get ? ListImages() : CreateImage(req);
    case RouteId::kImage:
      return del ? DeleteImage(id) : GetImage(id);
    case RouteId::kContainers:
      return get ? ListContainers(t) : CreateContainer(req);
    case RouteId::kContainer:
      return del ? DeleteContainer(id) : GetContainer(id);
    case RouteId::kContainerStop:
      return StopContainer(req, id);
    case RouteId::kContainerWait:
      return WaitContainer(req, t, id);
    case RouteId::kContainerLogs:
      return ContainerLogs(id);
    case RouteId::kEvents:
      return ListEvents(t);
    case RouteId::kPool:
      return Pool();
    case RouteId::kRepository:
      return Repository();
    case RouteId::kRepositoryGc:
      return RepositoryGc(req);
  }
  return StatusResponse(Status::Internal("unrouted request"));
}

HttpResponse Api::Healthz() { return JsonResponse(200, json::object{{"status", "ok"}}); }

HttpResponse Api::Version() {
  json::array backends;
  for (const auto& k : service_.vmms().Kinds()) backends.emplace_back(k);
  return JsonResponse(200, json::object{{"version", std::string(fcwarm::Version())},
                                        {"api", "v1"},
                                        {"backends", std::move(backends)},
                                        {"schema_version", service_.store().SchemaVersion()},
                                        {"limits", json::object{
                                            {"provision_ms", service_.engine().ProvisionDeadline().count()},
                                            {"container_start_ms", service_.containers().StartDeadline().count()},
                                        }}});
}

HttpResponse Api::Metrics() {
  auto text = metrics_.Render(stats_);
  if (!text.ok()) return StatusResponse(text.status());
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = std::move(text).value();
  return r;
}

// ---- runtime snapshots -----------------------------------------------------------------------------------

HttpResponse Api::CreateSnapshot(const HttpRequest& req) {
  auto body = ParseBodyObject(req.body);
  if (!body.ok()) return StatusResponse(body.status());
  ObjectReader r(*body);
  std::string image_id;
  r.RequiredString("runtime_image_id", &image_id);
  if (auto st = r.Finish(); !st.ok()) return StatusResponse(st);
  auto snap = service_.snapshots().CreateSnapshot(image_id);
  if (!snap.ok()) return StatusResponse(snap.status());
  return ItemResponse(202, SnapshotToJson(*snap));
}

HttpResponse Api::ListSnapshots(const Target& t) {
  SnapshotFilter f;
  if (auto it = t.query.find("runtime_image_id"); it != t.query.end()) {
    auto id = Id::Parse("runtime_image_id", it->second);
    if (!id.ok()) return StatusResponse(id.status());
    f.runtime_image_id = it->second;
  }
  if (auto it = t.query.find("state"); it != t.query.end()) {
    auto s = ParseSnapshotState(it->second);
    if (!s.ok()) return Invalid("state: must be one of creating, ready, unhealthy, deleted");
    f.state = *s;
  }
  auto inc = QueryBool(t, "include_deleted", false);
  if (!inc.ok()) return StatusResponse(inc.status());
  f.include_deleted = *inc || (f.state && *f.state == SnapshotState::kDeleted);
  auto list = service_.snapshots().List(f);
  if (!list.ok()) return StatusResponse(list.status());
  json::array items;
  for (const auto& s : *list) items.push_back(SnapshotToJson(s));
  return JsonResponse(200, json::object{{"items", std::move(items)}});
}

HttpResponse Api::GetSnapshot(const std::string& id) {
  auto s = service_.snapshots().Get(id);
  if (!s.ok()) return StatusResponse(s.status());
  return ItemResponse(200, SnapshotToJson(*s));
}

HttpResponse Api::RebuildSnapshot(const HttpRequest& req, const std::string& id) {
  if (auto st = CheckNoBody(req); !st.ok()) return StatusResponse(st);
  auto s = service_.snapshots().Rebuild(id);
  if (!s.ok()) return StatusResponse(s.status());
  return ItemResponse(202, SnapshotToJson(*s));
}

HttpResponse Api::DeleteSnapshot(const std::string& id) {
  if (auto st = service_.snapshots().Delete(id); !st.ok()) return StatusResponse(st);
  return JsonResponse(200, json::object{{"ok", true}});
}

// ---- runtime images
// ----------------------------------------------------------------------------------------

HttpResponse Api::CreateImage(const HttpRequest& req) {
  auto body = ParseBodyObject(req.body);
  if (!body.ok()) return StatusResponse(body.status());
  ObjectReader r(*body);
  RuntimeImage img;
  r.RequiredString("name", &img.name);
  r.RequiredString("backend", &img.backend);
  r.RequiredString("kernel_path", &img.kernel_path);
  r.OptionalString("initrd_path", &img.initrd_path);
  r.OptionalString("rootfs_path", &img.rootfs_path);
  r.OptionalString("boot_args", &img.boot_args);
  r.OptionalUint32("vcpus", &img.shape.vcpus, 1, 64);
  r.OptionalUint32("memory_mib", &img.shape.memory_mib, 64, 262144);
  if (const json::object* check = r.OptionalObject("runtime_check")) {
    ObjectReader c(*check, "runtime_check.");
    c.RequiredString("kind", &img.runtime_check.kind);
    c.OptionalString("path", &img.runtime_check.path);
    c.OptionalStringArray("argv", &img.runtime_check.argv, 64);
    r.SetError(c.Finish());
  }
  r.OptionalStringArray("preload_images", &img.preload_images, 32);
  if (auto st = r.Finish(); !st.ok()) return StatusResponse(st);
  auto stored = service_.images().Register(std::move(img));
  if (!stored.ok()) return StatusResponse(stored.status());
  return ItemResponse(201, ImageToJson(*stored));
}

// ---- the clone pool --------------------------------------------------------------------------------------

// ---- the shared snapshot repository (docs/multi-host.md) ---------------------------------------------------

namespace {
json::object RepositoryGenerationToJson(const RepositoryGeneration& g) {
  return json::object{{"repo_key", g.repo_key},
                      {"generation", g.generation},
                      {"node", g.node},
                      {"runtime_image", g.runtime_image},
                      {"created_at", g.created_at ? json::value(FormatRfc3339(g.created_at)) : json::value(nullptr)},
                      {"raw_bytes", g.raw_bytes}};
}
}  // namespace

HttpResponse Api::Repository() {
  auto list = service_.snapshots().ListRepository();
  if (!list.ok()) return StatusResponse(list.status());
  json::array items;
  for (const auto& g : *list) items.push_back(RepositoryGenerationToJson(g));
  const auto& o = service_.snapshots().options();
  return JsonResponse(200, json::object{{"url", o.repository.url},
                                        {"coordination", o.coordination.url},
                                        {"items", std::move(items)}});
}

HttpResponse Api::RepositoryGc(const HttpRequest& req) {
  auto body = ParseBodyObject(req.body.empty() ? std::string("{}") : req.body);
  if (!body.ok()) return StatusResponse(body.status());
  ObjectReader r(*body);
  RepositoryGcOptions o;
  uint32_t keep_newer_than_s = static_cast<uint32_t>(o.keep_newer_than.count() / 1000);
  uint32_t keep_newest = o.keep_newest;
  r.OptionalUint32("keep_newest", &keep_newest, 1, 1000);
  r.OptionalUint32("keep_newer_than_s", &keep_newer_than_s, 0, 10u * 365 * 86400);
  r.OptionalBool("dry_run", &o.dry_run);
  if (auto st = r.Finish(); !st.ok()) return StatusResponse(st);
  o.keep_newest = keep_newest;
  o.keep_newer_than = std::chrono::seconds(keep_newer_than_s);
  auto rep = service_.snapshots().CollectRepository(o);
  if (!rep.ok()) return StatusResponse(rep.status());
  json::array deleted, kept;
  for (const auto& g : rep->deleted) deleted.push_back(json::object{{"repo_key", g.repo_key}, {"generation", g.generation}});
  for (const auto& g : rep->kept) kept.push_back(json::object{{"repo_key", g.repo_key}, {"generation", g.generation}});
  json::array nodes;
  for (const auto& n : rep->nodes) nodes.emplace_back(n);
  return JsonResponse(200, json::object{{"dry_run", rep->dry_run},
                                        {"deleted", std::move(deleted)},
                                        {"kept", std::move(kept)},
                                        {"nodes", std::move(nodes)},
                                        {"chunks_deleted", rep->chunks_deleted},
                                        {"chunk_bytes_deleted", rep->chunk_bytes_deleted},
                                        {"chunks_kept", rep->chunks_kept}});
}

HttpResponse Api::Pool() {
  json::array items;
  for (const auto& p : service_.engine().Pool()) {
    json::array clones;
    uint64_t pss_total = 0;
    for (const auto& c : p.clones) {
      pss_total += c.pss_bytes.value_or(0);
      clones.push_back(json::object{
          {"vm_id", c.vm_id},
          {"snapshot_id", c.snapshot_id},
          {"generation", c.generation},
          {"ready_at", FormatRfc3339(c.ready_at)},
          {"pid", c.pid},
          {"pss_bytes", c.pss_bytes ? json::value(*c.pss_bytes) : json::value(nullptr)},
      });
    }
    json::object discarded;
    for (const auto& [r, n] : p.discarded) discarded[r] = n;
    items.push_back(json::object{
        {"image", p.image},
        {"runtime_image_id", p.runtime_image_id.empty() ? json::value(nullptr) : json::value(p.runtime_image_id)},
        {"size", p.target},
        {"ready", p.clones.size()},
        {"filling", p.filling},
        {"filled", p.filled},
        {"taken", p.taken},
        {"misses", p.misses},
        {"discarded", std::move(discarded)},
        {"pss_bytes", pss_total},
        {"last_error", p.last_error},
        {"clones", std::move(clones)},
    });
  }
  return JsonResponse(200, json::object{{"items", std::move(items)}});
}

HttpResponse Api::ListImages() {
  auto list = service_.images().List();
  if (!list.ok()) return StatusResponse(list.status());
  json::array items;
  for (const auto& i : *list) items.push_back(ImageToJson(i));
  return JsonResponse(200, json::object{{"items", std::move(items)}});
}

HttpResponse Api::GetImage(const std::string& id) {
  auto i = service_.images().Get(id);
  if (!i.ok()) return StatusResponse(i.status());
  return ItemResponse(200, ImageToJson(*i));
}

HttpResponse Api::DeleteImage(const std::string& id) {
  if (auto st = service_.images().Remove(id); !st.ok()) return StatusResponse(st);
  return JsonResponse(200, json::object{{"ok", true}});
}

// ---- containers
// --------------------------------------------------------------------------------------------

HttpResponse Api::CreateContainer(const HttpRequest& req) {
  auto body = ParseBodyObject(req.body);
  if (!body.ok()) return StatusResponse(body.status());
  ObjectReader r(*body);
  ContainerRequest spec;
  bool wait = true;
  r.OptionalString("name", &spec.name);
  r.OptionalString("image", &spec.image);
  r.OptionalString("runtime_image", &spec.runtime_image);
  r.OptionalStringArray("command", &spec.command, 256);
  r.OptionalStringMap("env", &spec.env, 256);
  r.OptionalString("working_dir", &spec.working_dir);
  r.OptionalString("user", &spec.user);
  r.OptionalBool("read_only", &spec.read_only);
  r.OptionalStringArray("ports", &spec.ports, 64);
  r.OptionalBool("wait", &wait);
  r.OptionalBool("force_cold", &spec.force_cold);
  if (auto st = r.Finish(); !st.ok()) return StatusResponse(st);
  auto created = containers_.Create(spec, wait);
  if (!created.ok()) return StatusResponse(created.status());
  return ItemResponse(wait ? 201 : 202, std::move(created).value());
}

HttpResponse Api::ListContainers(const Target& t) {
  auto inc = QueryBool(t, "include_destroyed", false);
  if (!inc.ok()) return StatusResponse(inc.status());
  auto list = containers_.List(*inc);
  if (!list.ok()) return StatusResponse(list.status());
  return JsonResponse(200, json::object{{"items", std::move(list).value()}});
}

HttpResponse Api::GetContainer(const std::string& id) {
  auto c = containers_.Get(id);
  if (!c.ok()) return StatusResponse(c.status());
  return ItemResponse(200, std::move(c).value());
}

HttpResponse Api::StopContainer(const HttpRequest& req, const std::string& id) {
  if (auto st = CheckNoBody(req); !st.ok()) return StatusResponse(st);
  auto c = containers_.Stop(id);
  if (!c.ok()) return StatusResponse(c.status());
  return ItemResponse(200, std::move(c).value());
}

HttpResponse Api::ContainerLogs(const std::string& id) {
  auto l = containers_.Logs(id);
  if (!l.ok()) return StatusResponse(l.status());
  return JsonResponse(200, std::move(l).value());
}

HttpResponse Api::WaitContainer(const HttpRequest& req, const Target& t, const std::string& id) {
  if (auto st = CheckNoBody(req); !st.ok()) return StatusResponse(st);
  auto timeout = QueryInt(t, "timeout_ms", 30000, 0, 600000);
  if (!timeout.ok()) return StatusResponse(timeout.status());
  auto c = containers_.Wait(id, std::chrono::milliseconds(*timeout));
  if (!c.ok()) return StatusResponse(c.status());
  return ItemResponse(200, std::move(c).value());
}

HttpResponse Api::DeleteContainer(const std::string& id) {
  if (auto st = containers_.Destroy(id); !st.ok()) return StatusResponse(st);
  return JsonResponse(200, json::object{{"ok", true}});
}

// ---- events
// ------------------------------------------------------------------------------------------------

HttpResponse Api::ListEvents(const Target& t) {
  EventFilter f;
  auto after = QueryInt(t, "after", 0, 0, INT64_MAX / 2);
  if (!after.ok()) return StatusResponse(after.status());
  auto limit = QueryInt(t, "limit", 100, 1, 1000);
  if (!limit.ok()) return StatusResponse(limit.status());
  f.after_id = *after;
  f.limit = *limit;
  if (auto it = t.query.find("kind"); it != t.query.end()) {
    auto kind = ParseEventKind(it->second);
    if (!kind.ok()) return StatusResponse(kind.status());
    f.kind = *kind;
  }
  if (auto it = t.query.find("runtime_image_id"); it != t.query.end()) {
    if (auto id = Id::Parse("runtime_image_id", it->second); !id.ok()) return StatusResponse(id.status());
    f.runtime_image_id = it->second;
  }
  if (auto it = t.query.find("snapshot_id"); it != t.query.end()) {
    if (auto id = Id::Parse("snapshot_id", it->second); !id.ok()) return StatusResponse(id.status());
    f.snapshot_id = it->second;
  }
  auto events = service_.store().ListEvents(f);
  if (!events.ok()) return StatusResponse(events.status());
  json::array items;
  int64_t next = f.after_id;
  for (const auto& e : *events) {
    items.push_back(EventToJson(e));
    next = std::max(next, e.id);
  }
  return JsonResponse(200, json::object{{"items", std::move(items)}, {"next_after", next}});
}

}  // namespace fcwarm::server
