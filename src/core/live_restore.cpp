#include "core/live_restore.hpp"

#include <boost/json.hpp>
#include <filesystem>

#include "util/common.hpp"

namespace fcwarm::internal {
namespace json = boost::json;

namespace {

constexpr int64_t kFormat = 1;

json::array Strings(const std::vector<std::string>& v) {
  json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return a;
}

Status Field(const json::object& o, const char* name, std::string* out) {
  const json::value* v = o.if_contains(name);
  if (!v || !v->is_string()) return Status::InvalidArgument(std::string("adoption record: '") + name + "' is not a string");
  *out = std::string(v->as_string());
  return Status::Ok();
}

Status Field(const json::object& o, const char* name, std::vector<std::string>* out) {
  const json::value* v = o.if_contains(name);
  if (!v || !v->is_array()) return Status::InvalidArgument(std::string("adoption record: '") + name + "' is not a list");
  out->clear();
  for (const auto& e : v->as_array()) {
    if (!e.is_string()) return Status::InvalidArgument(std::string("adoption record: '") + name + "' holds a non-string");
    out->emplace_back(e.as_string());
  }
  return Status::Ok();
}

}  // namespace

std::string AdoptionRecordJson(const AdoptionRecord& r) {
  const auto& n = r.network;
  json::object net{{"index", n.index},           {"mac", n.mac},
                   {"ip_cidr", n.ip_cidr},       {"gateway", n.gateway},
                   {"hostname", n.hostname},     {"egress", n.egress},
                   {"egress_allow", Strings(n.egress_allow)}, {"dns", Strings(n.dns)},
                   {"egress_deny", Strings(n.egress_deny)},   {"ports", Strings(n.ports)}};
  json::object o{{"format", kFormat}, {"instance_id", r.instance_id}, {"backend", r.backend}, {"network", net}};
  return json::serialize(o) + "\n";
}

Result<AdoptionRecord> ParseAdoptionRecord(const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return Status::InvalidArgument("adoption record: not a JSON object");
  const auto& o = v.as_object();
  const json::value* format = o.if_contains("format");
  if (!format || !format->is_int64() || format->as_int64() != kFormat) {
    return Status::InvalidArgument("adoption record: unknown format (expected " + std::to_string(kFormat) + ")");
  }
  AdoptionRecord r;
  if (auto st = Field(o, "instance_id", &r.instance_id); !st.ok()) return st;
  if (auto st = Field(o, "backend", &r.backend); !st.ok()) return st;
  const json::value* net = o.if_contains("network");
  if (!net || !net->is_object()) return Status::InvalidArgument("adoption record: 'network' is not an object");
  const auto& n = net->as_object();
  const json::value* index = n.if_contains("index");
  if (!index || !index->is_int64()) return Status::InvalidArgument("adoption record: 'network.index' is not an integer");
  r.network.index = index->as_int64();
  for (auto [name, out] : {std::pair{"mac", &r.network.mac}, std::pair{"ip_cidr", &r.network.ip_cidr},
                           std::pair{"gateway", &r.network.gateway}, std::pair{"hostname", &r.network.hostname},
                           std::pair{"egress", &r.network.egress}}) {
    if (auto st = Field(n, name, out); !st.ok()) return st;
  }
  for (auto [name, out] : {std::pair{"egress_allow", &r.network.egress_allow}, std::pair{"dns", &r.network.dns},
                           std::pair{"egress_deny", &r.network.egress_deny}, std::pair{"ports", &r.network.ports}}) {
    if (auto st = Field(n, name, out); !st.ok()) return st;
  }
  return r;
}

Status WriteAdoptionRecord(const LaunchSpec& spec, const std::string& backend) {
  AdoptionRecord r;
  r.instance_id = spec.vm_id;
  r.backend = backend;
  r.network = spec.network;
  return util::WriteFileDurable(std::filesystem::path(spec.work_dir) / kAdoptionRecordName, AdoptionRecordJson(r));
}

}  // namespace fcwarm::internal
