#include "codec.hpp"
#include "fcwarm/time_format.hpp"

namespace fcwarm::server {
namespace json = boost::json;

int HttpStatusFor(StatusCode code) { return StatusInfo(code).http_status; }

int HttpStatusOf(const Status& status) {
  if (status.code() == StatusCode::kResourceExhausted) {
    for (std::string_view words :
         {"No space left on device", "Disk quota exceeded", "database or disk is full"}) {
      if (status.message().find(words) != std::string::npos) return 507;
    }
  }
  return HttpStatusFor(status.code());
}

json::object TimingsToJson(const Timings& t) {
  json::object o;
  for (const auto& [k, v] : t) o[k] = v;
  return o;
}

json::object SnapshotToJson(const RuntimeSnapshot& s) {
  json::object o;
  o["id"] = s.id;
  o["runtime_image_id"] = s.runtime_image_id;
  o["state"] = ToString(s.state);
  o["phase"] = ToString(s.phase);
  o["generation"] = s.generation;
  o["generation_dir"] = s.generation_dir;
  o["compatibility_key"] = s.compatibility_key;
  json::object compat;
  for (const auto& [k, v] : s.compatibility) compat[k] = v;
  o["compatibility"] = std::move(compat);
  o["size_bytes"] = s.size_bytes;
  o["disk_bytes"] = s.disk_bytes;
  json::array files;
  for (const auto& f : s.files) {
    files.push_back(
        json::object{{"name", f.name}, {"size", f.size}, {"mtime_ns", f.mtime_ns}, {"xxh3", f.xxh3}});
  }
  o["files"] = std::move(files);
  o["manifest_digest"] = s.manifest_digest;
  o["origin"] = s.origin;
  o["images"] = json::value_from(s.images);
  json::array parked;
  for (const auto& p : s.parked) {
    parked.push_back(json::object{{"name", p.name}, {"image", p.image}, {"docker_id", p.docker_id}});
  }
  o["parked"] = std::move(parked);
  o["success_count"] = s.success_count;
  o["failure_count"] = s.failure_count;
  o["consecutive_failures"] = s.consecutive_failures;
  o["build_failures"] = s.build_failures;
  o["last_error"] = s.last_error;
  o["created_at"] = FormatRfc3339(s.created_at);
  o["updated_at"] = FormatRfc3339(s.updated_at);
  o["last_used_at"] = TimeOrNull(s.last_used_at);
  return o;
}

json::object ImageToJson(const RuntimeImage& i) {
  json::object o;
  o["id"] = i.id;
  o["name"] = i.name;
  o["backend"] = i.backend;
  o["kernel_path"] = i.kernel_path;
  o["initrd_path"] = i.initrd_path;
  o["rootfs_path"] = i.rootfs_path;
  o["boot_args"] = i.boot_args;
  o["vcpus"] = i.shape.vcpus;
  o["memory_mib"] = i.shape.memory_mib;
  json::array argv;
  for (const auto& a : i.runtime_check.argv) argv.emplace_back(a);
  o["runtime_check"] =
      json::object{{"kind", i.runtime_check.kind}, {"path", i.runtime_check.path}, {"argv", argv}};
  o["preload_images"] = json::value_from(i.preload_images);
  o["path"] = i.path();
  o["created_at"] = FormatRfc3339(i.created_at);
  return o;
}

json::value TimeOrNull(const std::optional<int64_t>& unix_ms) {
  return unix_ms ? json::value(FormatRfc3339(*unix_ms)) : json::value(nullptr);
}

json::object EventToJson(const Event& e) {
  json::object o;
  o["id"] = e.id;
  o["time"] = FormatRfc3339(e.time);
  o["kind"] = ToString(e.kind);
  o["runtime_image_id"] = e.runtime_image_id;
  o["snapshot_id"] = e.snapshot_id;
  o["vm_id"] = e.vm_id;
  o["outcome"] = e.outcome;
  o["reason"] = e.reason;
  o["timings"] = TimingsToJson(e.timings);
  o["message"] = e.message;
  return o;
}

Result<json::object> ParseBodyObject(std::string_view body) {
  size_t b = 0;
  while (b < body.size() && (body[b] == ' ' || body[b] == '\t' || body[b] == '\r' || body[b] == '\n')) ++b;
  if (b == body.size()) return Status::InvalidArgument("body: a JSON object is required");
  json::parse_options opts;
  opts.max_depth = 32;
  boost::system::error_code ec;
  json::value v = json::parse(body, ec, json::storage_ptr(), opts);
  if (ec) return Status::InvalidArgument("body: invalid JSON (" + ec.message() + ")");
  if (!v.is_object()) return Status::InvalidArgument("body: must be a JSON object");
  return std::move(v.as_object());
}

ObjectReader::ObjectReader(const json::object& object, std::string prefix)
    : object_(object), prefix_(std::move(prefix)) {}

const json::value* ObjectReader::Take(std::string_view key) {
  read_.emplace(key);
  if (!status_.ok()) return nullptr;
  auto it = object_.find(key);
  if (it == object_.end() || it->value().is_null()) return nullptr;
  return &it->value();
}

void ObjectReader::SetError(Status status) {
  if (status_.ok() && !status.ok()) status_ = std::move(status);
}

void ObjectReader::RequiredString(std::string_view key, std::string* out) {
  const json::value* v = Take(key);
  if (!status_.ok()) return;
  if (!v) {
    SetError(Status::InvalidArgument(Name(key) + ": is required"));
    return;
  }
  if (!v->is_string()) {
    SetError(Status::InvalidArgument(Name(key) + ": must be a string"));
    return;
  }
  *out = std::string(v->as_string());
}

void ObjectReader::OptionalString(std::string_view key, std::string* out) {
  const json::value* v = Take(key);
  if (!v) return;
  if (!v->is_string()) {
    SetError(Status::InvalidArgument(Name(key) + ": must be a string"));
    return;
  }
  *out = std::string(v->as_string());
}

void ObjectReader::OptionalUint32(std::string_view key, uint32_t* out, uint32_t min, uint32_t max) {
  const json::value* v = Take(key);
  if (!v) return;
  int64_t n = 0;
  if (v->is_int64()) {
    n = v->as_int64();
  } else if (v->is_uint64()) {
    n = v->as_uint64() > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(v->as_uint64());
  } else {
    SetError(Status::InvalidArgument(Name(key) + ": must be an integer"));
    return;
  }
  if (n < static_cast<int64_t>(min) || n > static_cast<int64_t>(max)) {
    SetError(Status::InvalidArgument(Name(key) + ": " + std::to_string(n) + " is outside " +
                                     std::to_string(min) + "-" + std::to_string(max)));
    return;
  }
  *out = static_cast<uint32_t>(n);
}

void ObjectReader::OptionalBool(std::string_view key, bool* out) {
  const json::value* v = Take(key);
  if (!v) return;
  if (!v->is_bool()) {
    SetError(Status::InvalidArgument(Name(key) + ": must be true or false"));
    return;
  }
  *out = v->as_bool();
}

void ObjectReader::OptionalStringArray(std::string_view key, std::vector<std::string>* out,
                                       size_t max_items) {
  const json::value* v = Take(key);
  if (!v) return;
  if (!v->is_array()) {
    SetError(Status::InvalidArgument(Name(key) + ": must be an array of strings"));
    return;
  }
  const auto& a = v->as_array();
  if (a.size() > max_items) {
    SetError(Status::InvalidArgument(Name(key) + ": more than " + std::to_string(max_items) + " items"));
    return;
  }
  std::vector<std::string> r;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_string()) {
      SetError(Status::InvalidArgument(Name(key) + "[" + std::to_string(i) + "]: must be a string"));
      return;
    }
    r.emplace_back(a[i].as_string());
  }
  *out = std::move(r);
}

void ObjectReader::OptionalStringMap(std::string_view key, std::map<std::string, std::string>* out,
                                     size_t max_items) {
  const json::value* v = Take(key);
  if (!v) return;
  if (!v->is_object()) {
    SetError(Status::InvalidArgument(Name(key) + ": must be an object of strings"));
    return;
  }
  const auto& o = v->as_object();
  if (o.size() > max_items) {
    SetError(Status::InvalidArgument(Name(key) + ": more than " + std::to_string(max_items) + " entries"));
    return;
  }
  std::map<std::string, std::string> r;
  for (const auto& kv : o) {
    if (!kv.value().is_string()) {
      SetError(Status::InvalidArgument(Name(key) + "." + std::string(kv.key()) + ": must be a string"));
      return;
    }
    r[std::string(kv.key())] = std::string(kv.value().as_string());
  }
  *out = std::move(r);
}

const json::object* ObjectReader::OptionalObject(std::string_view key) {
  const json::value* v = Take(key);
  if (!v) return nullptr;
  if (!v->is_object()) {
    SetError(Status::InvalidArgument(Name(key) + ": must be an object"));
    return nullptr;
  }
  return &v->as_object();
}

Status ObjectReader::Finish() {
  if (!status_.ok()) return status_;
  for (const auto& kv : object_) {
    if (!read_.count(std::string_view(kv.key()))) {
      std::string accepted;
      for (const auto& k : read_) accepted += (accepted.empty() ? "" : ", ") + k;
      std::string key(kv.key());
      std::string shown;
      for (unsigned char c : key.substr(0, 64)) shown += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
      return Status::InvalidArgument(Name(shown) + ": unknown field (accepted: " + accepted + ")");
    }
  }
  return Status::Ok();
}

std::string Serialize(const json::value& v) {
  std::string s = json::serialize(v);
  s += '\n';
  return s;
}

}  // namespace fcwarm::server
