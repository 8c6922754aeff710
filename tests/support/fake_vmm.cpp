#include "support/fake_vmm.hpp"

#include <signal.h>

#include <filesystem>
#include <functional>
#include <set>
#include <fstream>
#include <thread>

#include <boost/json.hpp>

#include "util/common.hpp"
#include "util/process.hpp"

namespace fcwarm::testing {
namespace fs = std::filesystem;

namespace {

// A scripted Docker daemon inside one fake VM (Engine API v1.41 subset: create, start, inspect, logs, image
// inspect, image list, image pull). It has busybox:latest (also as "busybox"); its "registry"
// (FakeVmm::pullable) serves more, each pulled as two layers of 1000 and 2345 bytes; pulling anything else
// fails inside the stream, as Docker does. A snapshot keeps the daemon's images: clones of it start with
// them. A container's output is its Cmd joined by spaces on stdout and "done" on stderr; Cmd
// ["sleep", ...] keeps running, ["exit", "N"] exits with N, anything else exits 0.
class FakeDocker {
 public:
  explicit FakeDocker(FakeVmm& vmm) : vmm_(vmm) {}

  // The images it has (references as pulled), and those a clone inherits from its snapshot.
  std::set<std::string> Images() {
    std::lock_guard lock(mu_);
    return images_;
  }
  void AddImages(const std::set<std::string>& refs) {
    std::lock_guard lock(mu_);
    images_.insert(refs.begin(), refs.end());
  }

  Result<DockerResponse> Handle(const DockerRequest& r) {
    namespace json = boost::json;
    std::lock_guard lock(mu_);
    const std::string images = "/v1.41/images/";
    if (r.path.rfind(images, 0) == 0) return HandleImage(r, r.path.substr(images.size()));
    const std::string prefix = "/v1.41/containers/";
    if (r.path.rfind(prefix, 0) != 0) return Reply(404, R"({"message":"page not found"})");
    std::string rest = r.path.substr(prefix.size());
    if (r.method == "POST" && (rest == "create" || rest.rfind("create?name=", 0) == 0)) {
      boost::system::error_code ec;
      auto v = json::parse(r.body, ec);
      if (ec || !v.is_object()) return Reply(400, R"({"message":"invalid JSON"})");
      const auto& o = v.as_object();
      std::string image = o.contains("Image") && o.at("Image").is_string() ? std::string(o.at("Image").as_string()) : "";
      if (!images_.count(image)) {
        return Reply(404, json::serialize(json::object{{"message", "No such image: " + image}}));
      }
      Container c;
      if (o.contains("Cmd") && o.at("Cmd").is_array()) {
        for (const auto& a : o.at("Cmd").as_array()) c.cmd.emplace_back(a.as_string());
      }
      char id[65];
      std::snprintf(id, sizeof id, "%064x", ++next_);
      containers_[id] = c;
      return Reply(201, json::serialize(json::object{{"Id", id}, {"Warnings", json::array()}}));
    }
    auto slash = rest.find('/');
    std::string id = rest.substr(0, slash);
    std::string what = slash == std::string::npos ? "" : rest.substr(slash + 1);
    auto it = containers_.find(id);
    if (it == containers_.end()) return Reply(404, R"({"message":"No such container"})");
    Container& c = it->second;
    if (r.method == "POST" && what == "start") {
      if (c.started) return Reply(304, "");
      c.started = true;
      if (!c.cmd.empty() && c.cmd[0] == "sleep") {
        c.status = "running";
      } else {
        c.status = "exited";
        c.exit_code = !c.cmd.empty() && c.cmd[0] == "exit" && c.cmd.size() > 1 ? std::stoi(c.cmd[1]) : 0;
      }
      return Reply(204, "");
    }
    if (r.method == "POST" && what.rfind("rename?name=", 0) == 0) return Reply(204, "");
    if (r.method == "GET" && what == "json") {
      json::object state{{"Status", c.status}, {"ExitCode", c.exit_code}};
      return Reply(200, json::serialize(json::object{{"Id", id}, {"State", state}}));
    }
    if (r.method == "GET" && what.rfind("logs", 0) == 0) {
      std::string out;
      for (const auto& a : c.cmd) out += (out.empty() ? "" : " ") + a;
      out += "\n";
      return Reply(200, Frame(1, out) + Frame(2, "done\n"));
    }
    return Reply(404, R"({"message":"page not found"})");
  }

 private:
  Result<DockerResponse> HandleImage(const DockerRequest& r, const std::string& rest) {
    namespace json = boost::json;
    const std::string create = "create?fromImage=";
    if (r.method == "GET" && rest == "json") {
      // One entry per reference, as Docker lists images: tags under RepoTags, a digest-only image under
      // RepoDigests with no tag.
      json::array list;
      for (const auto& ref : images_) {
        json::object o{{"Id", "sha256:" + std::string(64, '0')}};
        if (ref.find('@') != std::string::npos) {
          o["RepoTags"] = nullptr;
          o["RepoDigests"] = json::array{json::value(ref)};
        } else if (ref.find(':') != std::string::npos) {
          o["RepoTags"] = json::array{json::value(ref)};
          o["RepoDigests"] = json::array();
        } else {
          continue;  // "busybox": the fake's alias of busybox:latest for inspect
        }
        list.push_back(std::move(o));
      }
      return Reply(200, json::serialize(list));
    }
    if (r.method == "POST" && rest.rfind(create, 0) == 0) {
      auto amp = rest.find("&tag=");
      if (amp == std::string::npos) return Reply(400, R"({"message":"no tag"})");
      std::string name = rest.substr(create.size(), amp - create.size());
      std::string tag = rest.substr(amp + 5);
      std::string ref = name + (tag.rfind("sha256:", 0) == 0 ? "@" : ":") + tag;
      ++vmm_.pulls;
      bool known = false;
      {
        std::lock_guard lock(vmm_.pull_mu);
        known = vmm_.pullable.count(ref) > 0;
      }
      if (!known) {
        std::string msg = "manifest for " + ref + " not found: manifest unknown: manifest unknown";
        return Reply(200, json::serialize(json::object{{"status", "Pulling from " + name}, {"id", tag}}) + "\n" +
                              json::serialize(json::object{{"errorDetail", json::object{{"message", msg}}},
                                                           {"error", msg}}) +
                              "\n");
      }
      std::string body;
      for (auto [id, size] : {std::pair<const char*, int>{"aaa", 1000}, {"bbb", 2345}}) {
        body += json::serialize(json::object{{"status", "Pulling fs layer"}, {"id", id}}) + "\n";
        body += json::serialize(json::object{{"status", "Downloading"},
                                             {"progressDetail", json::object{{"current", size / 2}, {"total", size}}},
                                             {"id", id}}) +
                "\n";
        body += json::serialize(json::object{{"status", "Pull complete"}, {"id", id}}) + "\n";
      }
      body += json::serialize(json::object{{"status", "Status: Downloaded newer image for " + ref}}) + "\n";
      images_.insert(ref);
      return Reply(200, body);
    }
    if (r.method == "GET" && rest.size() > 5 && rest.substr(rest.size() - 5) == "/json") {
      std::string ref = rest.substr(0, rest.size() - 5);
      if (images_.count(ref) || (ref.find(':') == std::string::npos && images_.count(ref + ":latest"))) {
        return Reply(200, json::serialize(json::object{{"Id", "sha256:0123"}}));
      }
      return Reply(404, json::serialize(json::object{{"message", "No such image: " + ref}}));
    }
    return Reply(404, R"({"message":"page not found"})");
  }

  struct Container {
    std::vector<std::string> cmd;
    bool started = false;
    std::string status = "created";
    int exit_code = 0;
  };
  static Result<DockerResponse> Reply(int status, std::string body) {
    DockerResponse d;
    d.status = status;
    d.body = std::move(body);
    return d;
  }
  static std::string Frame(char stream, const std::string& payload) {
    std::string h(8, '\0');
    h[0] = stream;
    auto n = static_cast<uint32_t>(payload.size());
    h[4] = static_cast<char>(n >> 24);
    h[5] = static_cast<char>(n >> 16);
    h[6] = static_cast<char>(n >> 8);
    h[7] = static_cast<char>(n);
    return h + payload;
  }
  FakeVmm& vmm_;
  std::mutex mu_;
  std::map<std::string, Container> containers_;
  std::set<std::string> images_{"busybox:latest", "busybox"};
  unsigned next_ = 0;
};

class FakeGuest : public GuestChannel {
 public:
  FakeGuest(FakeVmm& vmm, std::string vm_id, std::function<bool()> alive, bool verify_fails)
      : vmm_(vmm), vm_id_(std::move(vm_id)), alive_(std::move(alive)), verify_fails_(verify_fails), docker_(vmm) {}
  FakeDocker& docker() { return docker_; }
  Result<GuestInfo> Ping(std::chrono::milliseconds) override {
    if (!Alive()) return Status::Unavailable("agent socket closed (VMM process is gone)");
    GuestInfo g;
    g.agent_version = "fake";
    g.protocol = kGuestProtocolVersion;
    g.hostname = hostname_;
    return g;
  }
  Result<IdentityResult> SetIdentity(const IdentityRequest& r, std::chrono::milliseconds) override {
    if (!Alive()) return Status::Unavailable("agent socket closed");
    hostname_ = r.hostname;
    vmm_.NoteIdentity(vm_id_, r.hostname);
    vmm_.NoteIdentityRequest(vm_id_, r);
    IdentityResult out;
    out.hostname = r.hostname;
    out.mac = r.mac;
    out.ip_cidr = r.ip_cidr;
    out.entropy_bytes = static_cast<int64_t>(r.entropy.size());
    out.clock_set = r.wall_clock_ns != 0;
    return out;
  }
  Result<RuntimeReadiness> RuntimeReady(const RuntimeCheck&, std::chrono::milliseconds) override {
    if (!Alive()) return Status::Unavailable("agent socket closed");
    if (verify_fails_) return RuntimeReadiness{false, "fake runtime refuses"};
    return RuntimeReadiness{true, "fake runtime ready"};
  }
  Status Quiesce(std::chrono::milliseconds) override {
    return Alive() ? Status::Ok() : Status::Unavailable("agent socket closed");
  }
  Result<ExecResult> Exec(const ExecRequest& r, std::chrono::milliseconds) override {
    if (!Alive()) return Status::Unavailable("agent socket closed");
    if (vmm_.script.violate_exec > 0) {
      --vmm_.script.violate_exec;
      return Status::DataLoss("guest agent exec: protocol violation: reply line longer than 8388608 bytes");
    }
    ExecResult e;
    e.exit_code = 0;
    for (const auto& a : r.argv) e.stdout_data += a + " ";
    return e;
  }
  Result<DockerResponse> Docker(const DockerRequest& r, std::chrono::milliseconds) override {
    if (!Alive()) return Status::Unavailable("agent socket closed");
    if (vmm_.script.fail_docker > 0) {
      --vmm_.script.fail_docker;
      return Status::Unavailable("guest agent docker: failed: connect /var/run/docker.sock: Connection refused");
    }
    if (vmm_.script.violate_docker > 0) {
      --vmm_.script.violate_docker;
      return Status::DataLoss("guest agent docker: protocol violation: 17 lines that answer no outstanding request");
    }
    ++vmm_.docker_requests;
    return docker_.Handle(r);
  }
  // As the agent channel does: the body line by line, with FakeVmm::on_stream_line between the lines.
  Result<DockerResponse> DockerStream(const DockerRequest& r, const std::function<void(std::string_view)>& on_body,
                                      std::chrono::milliseconds timeout) override {
    auto whole = Docker(r, timeout);
    if (!whole.ok()) return whole;
    std::string body = std::move(whole->body);
    whole->body.clear();
    size_t pos = 0, line = 0;
    while (pos < body.size()) {
      size_t nl = body.find('\n', pos);
      size_t end = nl == std::string::npos ? body.size() : nl + 1;
      on_body(std::string_view(body).substr(pos, end - pos));
      pos = end;
      std::function<void(size_t)> hook;
      {
        std::lock_guard lock(vmm_.pull_mu);
        hook = vmm_.on_stream_line;
      }
      if (hook) hook(++line);
    }
    return whole;
  }

 private:
  bool Alive() const { return alive_(); }
  FakeVmm& vmm_;
  std::string vm_id_;
  std::function<bool()> alive_;
  bool verify_fails_;
  std::string hostname_ = "fake-build";
  FakeDocker docker_;
};

class FakeVm : public Vm {
 public:
  FakeVm(FakeVmm& vmm, std::string vm_id, int pid, bool verify_fails, bool dead,
         const std::set<std::string>& images)
      : vmm_(vmm),
        pid_(pid),
        reaped_(dead),
        guest_(
            vmm, std::move(vm_id), [this] { return IsAlive(); }, verify_fails) {
    guest_.docker().AddImages(images);
    vmm_.NoteLive(+1);
  }
  ~FakeVm() override {
    (void)Stop(std::chrono::milliseconds(0));
    vmm_.NoteLive(-1);
  }
  int pid() const override { return pid_; }
  bool IsAlive() override {
    std::lock_guard lock(mu_);
    if (pid_ <= 0 || reaped_) return false;
    if (util::TryReap(pid_)) {
      reaped_ = true;
      return false;
    }
    return true;
  }
  GuestChannel& guest() override { return guest_; }
  Status Pause() override { return IsAlive() ? Status::Ok() : Status::Unavailable("VMM process exited"); }
  Status Resume() override { return IsAlive() ? Status::Ok() : Status::Unavailable("VMM process exited"); }
  Status Snapshot(const std::string& dir) override {
    if (!IsAlive()) return Status::Unavailable("VMM process exited");
    if (vmm_.script.fail_snapshots > 0) {
      vmm_.script.fail_snapshots--;
      // Crash midway: a partial file is left behind and the process dies.
      std::ofstream(fs::path(dir) / "memory.bin") << "partial";
      ::kill(pid_, SIGKILL);
      return Status::Unavailable("VMM process died during snapshot/create");
    }
    if (vmm_.script.snapshots_no_space > 0) {
      vmm_.script.snapshots_no_space--;
      // What a full file system leaves: a partial memory file, and the OS's ENOSPC as the backends report it.
      std::ofstream(fs::path(dir) / "memory.bin") << "partial";
      return Status::ResourceExhausted("write memory: copy to " + (fs::path(dir) / "memory.bin").string() +
                                       ": No space left on device");
    }
    std::string mem(static_cast<size_t>(vmm_.script.snapshot_bytes.load()), '\0');
    for (size_t i = 0; i < mem.size(); ++i) mem[i] = static_cast<char>((i * 131) & 0xff);
    std::ofstream(fs::path(dir) / "memory.bin", std::ios::binary) << mem;
    // The daemon's images are part of the guest's state: a clone has them.
    boost::json::array images;
    for (const auto& ref : guest_.docker().Images()) images.emplace_back(ref);
    std::ofstream(fs::path(dir) / "vmstate.json")
        << boost::json::serialize(boost::json::object{{"fake", true}, {"images", images}}) << "\n";
    vmm_.snapshots++;
    return Status::Ok();
  }
  Status Stop(std::chrono::milliseconds grace) override {
    std::lock_guard lock(mu_);
    if (pid_ > 0) {
      if (!reaped_) util::TerminateAndReap(pid_, grace);
      pid_ = -1;
    }
    return Status::Ok();
  }
  std::string console_log() const override { return ""; }

 private:
  FakeVmm& vmm_;
  std::mutex mu_;
  int pid_;
  bool reaped_;
  FakeGuest guest_;
};

}  // namespace

FakeVmm::FakeVmm(std::string kind) : kind_(std::move(kind)) {}

Result<std::map<std::string, std::string>> FakeVmm::HostCompatibility() {
  std::lock_guard lock(mu_);
  // host.kernel is the core's to report; the fake reports one anyway so that a test sees the core's win.
  return std::map<std::string, std::string>{{"vmm.version", host_version_}, {"host.kernel", "test"}};
}

void FakeVmm::SetHostVersion(const std::string& v) {
  std::lock_guard lock(mu_);
  host_version_ = v;
}

std::map<std::string, std::string> FakeVmm::identities() const {
  std::lock_guard lock(mu_);
  return identities_;
}
void FakeVmm::NoteIdentity(const std::string& vm_id, const std::string& hostname) {
  std::lock_guard lock(mu_);
  identities_[vm_id] = hostname;
}
void FakeVmm::NoteIdentityRequest(const std::string& vm_id, const IdentityRequest& r) {
  std::lock_guard lock(mu_);
  identity_requests_[vm_id] = r;
}
std::map<std::string, IdentityRequest> FakeVmm::identity_requests() const {
  std::lock_guard lock(mu_);
  return identity_requests_;
}
std::map<std::string, NetworkIdentity> FakeVmm::networks() const {
  std::lock_guard lock(mu_);
  return networks_;
}
void FakeVmm::NoteLive(int delta) {
  int now = live += delta;
  int prev = max_live.load();
  while (now > prev && !max_live.compare_exchange_weak(prev, now)) {
  }
}

Result<std::unique_ptr<Vm>> FakeVmm::Start(const LaunchSpec& spec, bool restored, bool verify_fails,
                                           const std::set<std::string>& images) {
  util::SpawnOptions o;
  o.argv = {"sleep", "3600"};
  auto child = util::Spawn(o);
  if (!child.ok()) return child.status();
  if (spec.on_process_started) spec.on_process_started(child->pid);
  {
    std::lock_guard lock(mu_);
    networks_[spec.vm_id] = spec.network;
  }
  bool dead = false;
  if (restored && script.kill_after_restore > 0) {
    script.kill_after_restore--;
    ::kill(child->pid, SIGKILL);
    util::WaitFor(child->pid, std::chrono::seconds(5));
    dead = true;
  }
  auto vm = std::make_unique<FakeVm>(*this, spec.vm_id, child->pid, verify_fails, dead, images);
  return std::unique_ptr<Vm>(std::move(vm));
}

Result<std::unique_ptr<Vm>> FakeVmm::ColdBoot(const LaunchSpec& spec) {
  if (int d = script.build_delay_ms.load(); d > 0) std::this_thread::sleep_for(std::chrono::milliseconds(d));
  if (script.fail_cold_boots > 0) {
    script.fail_cold_boots--;
    return Status::Unavailable("fake: cold boot failed (injected)");
  }
  if (script.cold_boots_no_space > 0) {
    script.cold_boots_no_space--;
    return Status::ResourceExhausted("fake: create " + (fs::path(spec.work_dir) / "overlay.qcow2").string() +
                                     ": No space left on device");
  }
  cold_boots++;
  return Start(spec, false, false, {});
}

Result<std::unique_ptr<Vm>> FakeVmm::Restore(const LaunchSpec& spec, const std::string& snapshot_dir) {
  if (int d = script.restore_delay_ms.load(); d > 0) std::this_thread::sleep_for(std::chrono::milliseconds(d));
  if (!fs::exists(fs::path(snapshot_dir) / "vmstate.json")) {
    return Status::Unavailable("fake: snapshot state file missing in " + snapshot_dir);
  }
  if (script.fail_restores > 0) {
    script.fail_restores--;
    return Status::Unavailable("fake: restore failed (injected)");
  }
  if (script.restores_no_space > 0) {
    script.restores_no_space--;
    return Status::ResourceExhausted("fake: create " + (fs::path(spec.work_dir) / "overlay.qcow2").string() +
                                     ": No space left on device");
  }
  bool verify_fails = false;
  if (script.fail_verifies > 0) {
    script.fail_verifies--;
    verify_fails = true;
  }
  // The images the snapshot's daemon had.
  std::set<std::string> images;
  {
    std::ifstream f(fs::path(snapshot_dir) / "vmstate.json");
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    boost::system::error_code ec;
    auto v = boost::json::parse(text, ec);
    if (!ec && v.is_object()) {
      if (const auto* a = v.as_object().if_contains("images"); a && a->is_array()) {
        for (const auto& e : a->as_array())
          if (e.is_string()) images.emplace(e.as_string());
      }
    }
  }
  restores++;
  return Start(spec, true, verify_fails, images);
}

}  // namespace fcwarm::testing
