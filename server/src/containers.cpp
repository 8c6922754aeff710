#include "containers.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "codec.hpp"
#include "fcwarm/ids.hpp"

namespace fcwarm::server {
namespace json = boost::json;

namespace {

constexpr size_t kMaxRemembered = 10000;

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}


Status ValidateEnvName(const std::string& k) {
  bool ok = !k.empty() && k.size() <= 256 && !(k[0] >= '0' && k[0] <= '9');
  for (char c : k) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
  }
  if (!ok) return Status::InvalidArgument("env: '" + k.substr(0, 64) + "' is not a valid variable name");
  return Status::Ok();
}

}  // namespace

ContainerService::ContainerService(Service& service, Runner runner)
    : service_(service), runner_(std::move(runner)) {}


json::object ContainerService::Render(const VmRecord& vm, const Entry* e, const std::string& id) const {
  json::object o;
  o["id"] = id;
  o["vm_id"] = vm.id;
  o["name"] = vm.name;
  o["image"] = vm.runtime_image_id;
  o["runtime_image_id"] = vm.runtime_image_id;
  // A VM record still `starting` is a container being provisioned (the record exists from the first moment,
  // since the container id is the VM id).
  o["state"] = vm.state == VmState::kStarting ? std::string_view("provisioning") : ToString(vm.state);
  o["boot_method"] =
      vm.state == VmState::kStarting ? json::value(nullptr) : json::value(ToString(vm.boot_method));
  if (vm.fallback_reason == FallbackReason::kNone) {
    o["fallback_reason"] = nullptr;
  } else {
    o["fallback_reason"] = ToString(vm.fallback_reason);
  }
  o["timings"] = TimingsToJson(vm.timings);
  o["snapshot_id"] = vm.snapshot_id;
  o["generation"] = vm.generation;
  o["address"] = vm.address;
  o["mac"] = vm.mac;
  o["hostname"] = vm.hostname;
  o["last_error"] = vm.last_error;
  o["created_at"] = vm.created_at;
  o["updated_at"] = vm.updated_at;
  json::array cmd;
  json::object env;
  if (e) {
    for (const auto& c : e->command) cmd.emplace_back(c);
    for (const auto& [k, v] : e->env) env[k] = v;
  }
  o["command"] = std::move(cmd);
  o["env"] = std::move(env);
  return o;
}

json::object ContainerService::RenderEntry(const Entry& e) const {
  json::object o;
  o["id"] = e.id;
  o["vm_id"] = e.vm_id.empty() ? json::value(nullptr) : json::value(e.vm_id);
  o["name"] = e.name;
  o["image"] = e.runtime_image_id;
  o["runtime_image_id"] = e.runtime_image_id;
  o["state"] = e.state;
  o["boot_method"] = nullptr;
  o["fallback_reason"] = nullptr;
  o["timings"] = json::object();
  o["snapshot_id"] = "";
  o["generation"] = 0;
  o["address"] = "";
  o["mac"] = "";
  o["hostname"] = "";
  o["last_error"] = e.error;
  o["created_at"] = e.created_at;
  o["updated_at"] = e.created_at;
  json::array cmd;
  for (const auto& c : e.command) cmd.emplace_back(c);
  json::object env;
  for (const auto& [k, v] : e.env) env[k] = v;
  o["command"] = std::move(cmd);
  o["env"] = std::move(env);
  return o;
}

Result<json::object> ContainerService::Create(const ContainerSpec& spec, bool* waited) {
  *waited = false;
  if (auto st = ValidateName("name", spec.name); !st.ok()) return st;
  if (spec.image.empty()) return Status::InvalidArgument("image: is required");
  for (size_t i = 0; i < spec.command.size(); ++i) {
    if (spec.command[i].find('\0') != std::string::npos) {
      return Status::InvalidArgument("command[" + std::to_string(i) + "]: contains a NUL byte");
    }
  }
  for (const auto& [k, v] : spec.env) {
    if (auto st = ValidateEnvName(k); !st.ok()) return st;
    if (v.find('\0') != std::string::npos)
      return Status::InvalidArgument("env." + k + ": contains a NUL byte");
  }
  RuntimeImage image;
  if (Id::IsValid(spec.image)) {
    auto r = service_.images().Get(spec.image);
    if (!r.ok()) return r.status();
    image = std::move(r).value();
  } else {
    if (auto st = ValidateName("image", spec.image); !st.ok()) {
      return Status::InvalidArgument("image: '" + spec.image.substr(0, 64) +
                                     "' is neither an image id nor a valid image name");
    }
    auto r = service_.images().GetByName(spec.image);
    if (!r.ok()) return r.status();
    image = std::move(r).value();
  }

  ProvisionRequest req;
  req.runtime_image_id = image.id;
  req.name = spec.name;

  if (spec.wait) {
    std::string id = Id::Generate().str();
    req.vm_id = id;  // the container id is the VM id
    auto vm = service_.engine().Provision(req);
    if (!vm.ok()) return vm.status();
    Entry e;
    e.id = id;
    e.name = spec.name;
    e.runtime_image_id = image.id;
    e.command = spec.command;
    e.env = spec.env;
    e.state = "created";
    e.vm_id = vm->id;
    e.created_at = vm->created_at;
    json::object item = Render(*vm, &e, e.id);
    {
      std::lock_guard lock(mu_);
      e.seq = ++seq_;
      by_vm_[e.vm_id] = e.id;
      entries_[e.id] = std::move(e);
      Trim();
    }
    *waited = true;
    return json::object{{"id", item["id"]}, {"item", std::move(item)}};
  }

  Entry e;
  e.id = Id::Generate().str();
  req.vm_id = e.id;  // the container id is the VM id from the first moment
  e.name = spec.name;
  e.runtime_image_id = image.id;
  e.command = spec.command;
  e.env = spec.env;
  e.created_at = NowMillis();
  json::object item = RenderEntry(e);
  std::string id = e.id;
  {
    std::lock_guard lock(mu_);
    e.seq = ++seq_;
    entries_[id] = std::move(e);
  }
  bool queued = runner_([this, id, req] {
    auto vm = service_.engine().Provision(req);
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (vm.ok()) {
      it->second.state = "created";
      it->second.vm_id = vm->id;
      by_vm_[vm->id] = id;
    } else {
      it->second.state = "failed";
      it->second.error = vm.status().message();
      it->second.error_code = std::string(StatusCodeName(vm.status().code()));
      // The VM record exists (state failed) when the failure came after it was created.
      if (service_.engine().Get(id).ok()) {
        it->second.vm_id = id;
        by_vm_[id] = id;
      }
      spdlog::warn("container={} event=provision_failed error=\"{}\"", id, vm.status().ToString());
    }
    Trim();
  });
  if (!queued) {
    std::lock_guard lock(mu_);
    entries_.erase(id);
    return Status::ResourceExhausted("too many containers are being provisioned; retry later");
  }
  return json::object{{"id", id}, {"item", std::move(item)}};
}

Result<json::object> ContainerService::Get(const std::string& id) const {
  if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
  Entry copy;
  bool have = false;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      copy = it->second;
      have = true;
    }
  }
  if (have && copy.vm_id.empty()) {
    // Still provisioning, or failed: the VM record (container id = VM id) exists once Provision created it.
    auto vm = service_.engine().Get(id);
    if (vm.ok()) return Render(*vm, &copy, id);
    return RenderEntry(copy);
  }
  std::string vm_id = have ? copy.vm_id : id;
  auto vm = service_.engine().Get(vm_id);
  if (!vm.ok()) {
    if (vm.status().code() == StatusCode::kNotFound)
      return Status::NotFound("container '" + id + "' not found");
    return vm.status();
  }
  if (!have) {
    std::lock_guard lock(mu_);
    auto r = by_vm_.find(vm_id);
    if (r != by_vm_.end() && r->second != id) {
      auto it = entries_.find(r->second);
      if (it != entries_.end()) copy = it->second, have = true;
    }
  }
  return Render(*vm, have ? &copy : nullptr, id);
}

Result<json::array> ContainerService::List(bool include_destroyed) const {
  auto vms = service_.engine().List(include_destroyed);
  if (!vms.ok()) return vms.status();
  std::vector<Entry> pending;
  std::map<std::string, Entry> by_vm;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, e] : entries_) {
      if (e.vm_id.empty()) {
        pending.push_back(e);
      } else {
        by_vm[e.vm_id] = e;
      }
    }
  }
  std::sort(pending.begin(), pending.end(), [](const Entry& a, const Entry& b) { return a.seq > b.seq; });
  json::array items;
  std::set<std::string> seen;
  for (const auto& vm : *vms) {
    auto it = by_vm.find(vm.id);
    const Entry* e = it == by_vm.end() ? nullptr : &it->second;
    seen.insert(vm.id);
    items.push_back(Render(vm, e, e ? e->id : vm.id));
  }
  json::array out;
  for (const auto& e : pending) {
    if (seen.count(e.id)) continue;  // the library created the record under our id already
    out.push_back(RenderEntry(e));
  }
  for (auto& v : items) out.push_back(std::move(v));
  return out;
}

Result<json::object> ContainerService::Stop(const std::string& id) {
  if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
  std::string vm_id = id;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      if (it->second.vm_id.empty()) {
        if (it->second.state == "provisioning") {
          return Status::FailedPrecondition("container '" + id + "' is still provisioning");
        }
        return Status::FailedPrecondition("container '" + id + "' failed to start: " + it->second.error);
      }
      vm_id = it->second.vm_id;
    }
  }
  auto st = service_.engine().Stop(vm_id);
  if (!st.ok()) {
    if (st.code() == StatusCode::kNotFound) return Status::NotFound("container '" + id + "' not found");
    return st;
  }
  return Get(id);
}

Status ContainerService::Destroy(const std::string& id) {
  if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
  std::string vm_id = id;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      if (it->second.vm_id.empty()) {
        if (it->second.state == "provisioning") {
          return Status::FailedPrecondition("container '" + id +
                                            "' is still provisioning; delete it once it runs");
        }
        entries_.erase(it);  // failed before a VM existed: nothing to release
        return Status::Ok();
      }
      vm_id = it->second.vm_id;
    }
  }
  auto st = service_.engine().Destroy(vm_id);
  if (!st.ok()) {
    if (st.code() == StatusCode::kNotFound) return Status::NotFound("container '" + id + "' not found");
    return st;
  }
  std::lock_guard lock(mu_);
  entries_.erase(id);
  by_vm_.erase(vm_id);
  return Status::Ok();
}

void ContainerService::FailPending(const std::string& reason) {
  std::lock_guard lock(mu_);
  for (auto& [id, e] : entries_) {
    if (e.state == "provisioning") {
      e.state = "failed";
      e.error = reason;
      e.error_code = "unavailable";
    }
  }
}

int ContainerService::Provisioning() const {
  std::lock_guard lock(mu_);
  int n = 0;
  for (const auto& [id, e] : entries_) n += e.state == "provisioning";
  return n;
}

void ContainerService::Trim() {
  if (entries_.size() <= kMaxRemembered) return;
  // Forget the oldest finished entries; their VMs stay reachable by VM id.
  std::vector<std::pair<uint64_t, std::string>> done;
  for (const auto& [id, e] : entries_) {
    if (e.state != "provisioning") done.emplace_back(e.seq, id);
  }
  std::sort(done.begin(), done.end());
  for (size_t i = 0; i < done.size() && entries_.size() > kMaxRemembered; ++i) {
    auto it = entries_.find(done[i].second);
    if (!it->second.vm_id.empty()) by_vm_.erase(it->second.vm_id);
    entries_.erase(it);
  }
}

}  // namespace fcwarm::server
