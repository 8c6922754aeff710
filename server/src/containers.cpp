#include "containers.hpp"

#include <spdlog/spdlog.h>

#include "codec.hpp"
#include "fcwarm/time_format.hpp"

namespace fcwarm::server {
namespace json = boost::json;

namespace {

// JSON strings must be UTF-8: container output may not be. Invalid bytes become U+FFFD.
std::string Utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok && n == 2) ok = c >= 0xc2;
    if (ok && n == 3) {
      auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0);
    }
    if (ok && n == 4) {
      auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = c <= 0xf4 && !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(s, i, n);
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      ++i;
    }
  }
  return out;
}

}  // namespace

ContainerService::ContainerService(Service& service) : service_(service) {}

json::object ContainerService::Render(const ContainerRecord& c) {
  json::object o;
  o["id"] = c.id;
  auto vm_id = c.vm_id();
  o["vm_id"] = vm_id ? json::value(*vm_id) : json::value(nullptr);
  o["name"] = c.name;
  o["image"] = c.image;
  o["runtime_image_id"] = c.runtime_image_id;
  o["runtime"] = c.runtime;
  o["state"] = ToString(c.state);
  o["exit_code"] = c.exit_code ? json::value(*c.exit_code) : json::value(nullptr);
  o["docker_id"] = c.docker_id;
  o["boot_method"] = c.boot_method ? json::value(ToString(*c.boot_method)) : json::value(nullptr);
  o["fallback_reason"] =
      c.fallback_reason == FallbackReason::kNone ? json::value(nullptr) : json::value(ToString(c.fallback_reason));
  o["timings"] = TimingsToJson(c.timings);
  o["snapshot_id"] = c.snapshot_id;
  o["generation"] = c.generation;
  o["address"] = c.address.substr(0, c.address.find('/'));
  json::array ports;
  for (const auto& p : c.ports) ports.emplace_back(p);
  o["ports"] = std::move(ports);
  if (c.pull) {
    o["pull"] = json::object{{"layers", c.pull->layers},
                             {"layers_total", c.pull->layers_total},
                             {"bytes", c.pull->bytes},
                             {"bytes_total", c.pull->bytes_total},
                             {"ms", c.pull->ms},
                             {"done", c.pull->done}};
  } else {
    o["pull"] = nullptr;
  }
  o["mac"] = c.mac;
  o["hostname"] = c.hostname;
  o["vm_state"] = c.vm_state;
  o["last_error"] = c.last_error;
  o["created_at"] = FormatRfc3339(c.created_at);
  o["updated_at"] = FormatRfc3339(c.updated_at);
  o["started_at"] = TimeOrNull(c.started_at);
  o["finished_at"] = TimeOrNull(c.finished_at);
  json::array cmd;
  for (const auto& a : c.command) cmd.emplace_back(a);
  o["command"] = std::move(cmd);
  json::object env;
  for (const auto& [k, v] : c.env) env[k] = v;
  o["env"] = std::move(env);
  o["working_dir"] = c.working_dir;
  o["user"] = c.user;
  o["read_only"] = c.read_only;
  o["container_path"] = c.container_path.empty() ? json::value(nullptr) : json::value(c.container_path);
  o["container_path_reason"] =
      c.container_path_reason.empty() ? json::value(nullptr) : json::value(c.container_path_reason);
  return o;
}

Result<json::object> ContainerService::Create(const ContainerRequest& request, bool wait) {
  auto& cm = service_.containers();
  auto c = wait ? cm.Create(request) : cm.CreateAsync(request);
  if (!c.ok()) return c.status();
  return Render(*c);
}

Result<json::object> ContainerService::Get(const std::string& id) {
  auto c = service_.containers().Get(id);
  if (!c.ok()) return c.status();
  return Render(*c);
}

Result<json::array> ContainerService::List(bool include_destroyed) {
  auto list = service_.containers().List(include_destroyed);
  if (!list.ok()) return list.status();
  json::array out;
  for (const auto& c : *list) out.push_back(Render(c));
  return out;
}

Result<json::object> ContainerService::Stop(const std::string& id) {
  auto c = service_.containers().Stop(id);
  if (!c.ok()) return c.status();
  return Render(*c);
}

Result<json::object> ContainerService::Wait(const std::string& id, std::chrono::milliseconds timeout) {
  auto c = service_.containers().Wait(id, timeout);
  if (!c.ok()) return c.status();
  return Render(*c);
}

Result<json::object> ContainerService::Logs(const std::string& id) {
  auto l = service_.containers().Logs(id);
  if (!l.ok()) return l.status();
  return json::object{{"stdout", Utf8(l->stdout_data)}, {"stderr", Utf8(l->stderr_data)}, {"truncated", l->truncated}};
}

Status ContainerService::Destroy(const std::string& id) { return service_.containers().Destroy(id); }

}  // namespace fcwarm::server
