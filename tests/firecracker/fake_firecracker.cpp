// A strict Firecracker API double: a fake `firecracker` executable that serves the documented HTTP API on
// `--api-sock` and enforces its state machine. Used only by tests.
//
// Enforced (400 with {"fault_message": ...} on any violation):
//   - HTTP/1.1 request syntax, Content-Length bodies, JSON object bodies for PUT/PATCH, none for GET;
//   - exact field names and JSON types per endpoint (unknown fields are rejected, as serde's
//     deny_unknown_fields does), version-gated fields (network_overrides >= 1.12, track_dirty_pages on load
//     >= 1.13 and enable_diff_snapshots before it, vsock_override >= 1.16, mem_backend >= 1.1);
//   - configuration only before boot; logger/metrics at most once; InstanceStart needs a boot source;
//   - PATCH /vm only on a running/restored VM; snapshot/create only while paused;
//   - snapshot/load only in a fresh process where nothing but logger/metrics was configured; a failed load
//     answers 400 and then exits, as Firecracker does; the state file's snapshot version must equal ours.
// The vsock device is emulated: the host-side socket answers "CONNECT <port>\n" with "OK <n>\n" and then a
// tiny guest agent (ping/identity/runtime_ready/quiesce/exec) when the port is the agent's.
//
// Environment knobs (all optional):
//   FCWARM_FAKE_FC_VERSION           version printed and enforced (default 1.14.2)
//   FCWARM_FAKE_FC_SNAPSHOT_VERSION  snapshot format version (default v<minor-6>.0.0, e.g. v8.0.0 for 1.14)
//   FCWARM_FAKE_FC_LOG               append one JSON line per request (method, path, body, status, fault)
//   FCWARM_FAKE_FC_NO_SOCKET=1       never create the API socket
//   FCWARM_FAKE_FC_EXIT_AT_START=N   exit with code N before creating the socket
//   FCWARM_FAKE_FC_DIE_ON="PUT /x"   exit abruptly when that request arrives (no answer)
//   FCWARM_FAKE_FC_FAIL_ON="PUT /x"  answer that request with 400 "injected failure"
//   FCWARM_FAKE_FC_CHECK_TAP=1       TAP devices named in the config must exist (/sys/class/net)
//   FCWARM_FAKE_FC_AGENT_PORT        guest port the emulated agent listens on (default 52)
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace json = boost::json;

namespace {

std::string Env(const char* name, const std::string& def = "") {
  const char* v = std::getenv(name);
  return v ? std::string(v) : def;
}

struct Version {
  int major = 1, minor = 14, patch = 2;
  bool AtLeast(int a, int b) const { return major > a || (major == a && minor >= b); }
  std::string Text() const {
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  }
};

Version g_version;
std::string g_snapshot_version;
std::string g_instance_id = "anonymous-instance";

// ---- HTTP
// ----------------------------------------------------------------------------------------------------

struct Request {
  std::string method, path, body;
  bool has_body = false;
};

struct Reply {
  int status = 204;
  std::string body;
};

Reply Fault(const std::string& msg) { return {400, json::serialize(json::object{{"fault_message", msg}})}; }

struct ApiError {
  std::string msg;
};

// ---- field validation
// ------------------------------------------------------------------------------------------

enum class T { kString, kBool, kUint, kObject, kArray };

struct Field {
  const char* name;
  T type;
  bool required;
};

const char* TypeName(T t) {
  switch (t) {
    case T::kString:
      return "a string";
    case T::kBool:
      return "a boolean";
    case T::kUint:
      return "an unsigned integer";
    case T::kObject:
      return "an object";
    case T::kArray:
      return "an array";
  }
  return "?";
}

void CheckFields(const json::object& o, const std::vector<Field>& fields, const std::string& where) {
  for (const auto& kv : o) {
    bool known = false;
    for (const auto& f : fields) {
      if (kv.key() == f.name) {
        known = true;
        const json::value& v = kv.value();
        bool ok = (f.type == T::kString && v.is_string()) || (f.type == T::kBool && v.is_bool()) ||
                  (f.type == T::kUint && (v.is_uint64() || (v.is_int64() && v.as_int64() >= 0))) ||
                  (f.type == T::kObject && v.is_object()) || (f.type == T::kArray && v.is_array());
        if (!ok) throw ApiError{where + ": field `" + f.name + "` must be " + TypeName(f.type)};
      }
    }
    if (!known) throw ApiError{where + ": unknown field `" + std::string(kv.key()) + "`"};
  }
  for (const auto& f : fields) {
    if (f.required && !o.contains(f.name)) throw ApiError{where + ": missing field `" + f.name + "`"};
  }
}

std::string S(const json::object& o, const char* k) {
  const auto* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->as_string()) : "";
}
uint64_t U(const json::object& o, const char* k) {
  const auto* v = o.if_contains(k);
  if (!v) return 0;
  return v->is_uint64() ? v->as_uint64() : static_cast<uint64_t>(v->as_int64());
}
bool B(const json::object& o, const char* k) {
  const auto* v = o.if_contains(k);
  return v && v->as_bool();
}

bool FileExists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

// ---- the emulated VMM
// --------------------------------------------------------------------------------------------

struct Vmm {
  bool booted = false;  // InstanceStart done
  bool loaded = false;  // snapshot/load done
  bool paused = false;
  bool configured = false;  // anything but logger/metrics configured
  bool logger = false, metrics = false;
  std::optional<json::object> boot_source;
  json::object machine{{"vcpu_count", 1}, {"mem_size_mib", 128}, {"track_dirty_pages", false}};
  std::map<std::string, json::object> drives, nets;
  std::optional<json::object> vsock;
  std::string vsock_path;  // bound path
  int vsock_listen = -1;
  std::string boot_id;
  std::string hostname = "fake-guest";

  bool Running() const { return booted || loaded; }
  std::string StateName() const {
    if (!Running()) return "Not started";
    return paused ? "Paused" : "Running";
  }
};

Vmm g_vm;

int Listen(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return -1;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void CheckTap(const std::string& name) {
  if (Env("FCWARM_FAKE_FC_CHECK_TAP") != "1") return;
  // if_nametoindex asks the caller's network namespace (/sys/class/net shows the namespace sysfs was mounted
  // in).
  if (::if_nametoindex(name.c_str()) == 0)
    throw ApiError{"Open tap device failed: no interface named " + name};
}

void BindVsock(const std::string& uds) {
  if (FileExists(uds)) throw ApiError{"Cannot create vsock backend: Address in use: " + uds};
  g_vm.vsock_listen = Listen(uds);
  if (g_vm.vsock_listen < 0) throw ApiError{"Cannot create vsock backend: cannot bind " + uds};
  g_vm.vsock_path = uds;
}

void RequireNotStarted(const std::string& what) {
  if (g_vm.Running()) {
    throw ApiError{"The requested operation is not supported after starting the microVM: " + what};
  }
}

void NoteConfig(const std::string& what) {
  RequireNotStarted(what);
  g_vm.configured = true;
}

std::string PathId(const std::string& path, const std::string& prefix) {
  std::string id = path.substr(prefix.size());
  if (id.empty() || id.find('/') != std::string::npos) throw ApiError{"Invalid request method and/or path"};
  return id;
}

[[noreturn]] void FailLoadAndExit(int fd, const std::string& msg);

Reply Handle(const Request& r, int fd) {
  const std::string key = r.method + " " + r.path;
  if (Env("FCWARM_FAKE_FC_DIE_ON") == key) ::_exit(3);
  if (Env("FCWARM_FAKE_FC_FAIL_ON") == key) return Fault("injected failure for " + key);

  if (r.method == "GET") {
    if (r.has_body) throw ApiError{"GET requests take no body"};
    if (r.path == "/") {
      return {200, json::serialize(json::object{{"app_name", "Firecracker"},
                                                {"id", g_instance_id},
                                                {"state", g_vm.StateName()},
                                                {"vmm_version", g_version.Text()}})};
    }
    if (r.path == "/version")
      return {200, json::serialize(json::object{{"firecracker_version", g_version.Text()}})};
    if (r.path == "/machine-config") return {200, json::serialize(g_vm.machine)};
    throw ApiError{"Invalid request method and/or path: " + key};
  }
  if (r.method != "PUT" && r.method != "PATCH") throw ApiError{"Invalid request method: " + r.method};
  if (!r.has_body) throw ApiError{"Empty request body for " + key};
  boost::system::error_code ec;
  json::value v = json::parse(r.body, ec);
  if (ec) throw ApiError{"An error occurred when deserializing the json body of a request: " + ec.message()};
  if (!v.is_object()) throw ApiError{"The request body must be a JSON object"};
  const json::object& o = v.as_object();

  if (r.method == "PATCH") {
    if (r.path != "/vm") throw ApiError{"Invalid request method and/or path: " + key};
    CheckFields(o, {{"state", T::kString, true}}, "vm");
    std::string st = S(o, "state");
    if (st != "Paused" && st != "Resumed") throw ApiError{"vm: unknown variant `" + st + "`"};
    if (!g_vm.Running())
      throw ApiError{"The requested operation is not supported before starting the microVM."};
    g_vm.paused = st == "Paused";
    return {};
  }

  // PUT
  if (r.path == "/logger") {
    CheckFields(o,
                {{"log_path", T::kString, true},
                 {"level", T::kString, false},
                 {"show_level", T::kBool, false},
                 {"show_log_origin", T::kBool, false},
                 {"module", T::kString, false}},
                "logger");
    RequireNotStarted("logger");
    if (g_vm.logger) throw ApiError{"Reinitialization of logger not allowed."};
    std::string level = S(o, "level");
    if (!level.empty() && level != "Error" && level != "Warning" && level != "Info" && level != "Debug" &&
        level != "Trace" && level != "Off") {
      throw ApiError{"logger: unknown level `" + level + "`"};
    }
    if (!FileExists(S(o, "log_path"))) throw ApiError{"Failed to open target file: " + S(o, "log_path")};
    g_vm.logger = true;
    return {};
  }
  if (r.path == "/metrics") {
    CheckFields(o, {{"metrics_path", T::kString, true}}, "metrics");
    RequireNotStarted("metrics");
    if (g_vm.metrics) throw ApiError{"Reinitialization of metrics not allowed."};
    if (!FileExists(S(o, "metrics_path")))
      throw ApiError{"Failed to open target file: " + S(o, "metrics_path")};
    g_vm.metrics = true;
    return {};
  }
  if (r.path == "/boot-source") {
    CheckFields(o,
                {{"kernel_image_path", T::kString, true},
                 {"boot_args", T::kString, false},
                 {"initrd_path", T::kString, false}},
                "boot-source");
    NoteConfig("boot-source");
    if (!FileExists(S(o, "kernel_image_path")))
      throw ApiError{"Cannot open kernel image: " + S(o, "kernel_image_path")};
    if (o.contains("initrd_path") && !FileExists(S(o, "initrd_path"))) {
      throw ApiError{"Cannot open initrd: " + S(o, "initrd_path")};
    }
    g_vm.boot_source = o;
    return {};
  }
  if (r.path == "/machine-config") {
    CheckFields(o,
                {{"vcpu_count", T::kUint, true},
                 {"mem_size_mib", T::kUint, true},
                 {"smt", T::kBool, false},
                 {"track_dirty_pages", T::kBool, false},
                 {"cpu_template", T::kString, false},
                 {"huge_pages", T::kString, false}},
                "machine-config");
    NoteConfig("machine-config");
    if (U(o, "vcpu_count") < 1 || U(o, "vcpu_count") > 32) throw ApiError{"The vCPU number is invalid!"};
    if (U(o, "mem_size_mib") == 0) throw ApiError{"The memory size (MiB) is invalid."};
    g_vm.machine = o;
    if (!g_vm.machine.contains("track_dirty_pages")) g_vm.machine["track_dirty_pages"] = false;
    return {};
  }
  if (r.path.rfind("/drives/", 0) == 0) {
    std::string id = PathId(r.path, "/drives/");
    CheckFields(o,
                {{"drive_id", T::kString, true},
                 {"path_on_host", T::kString, true},
                 {"is_root_device", T::kBool, true},
                 {"is_read_only", T::kBool, false},
                 {"partuuid", T::kString, false},
                 {"cache_type", T::kString, false},
                 {"io_engine", T::kString, false},
                 {"rate_limiter", T::kObject, false}},
                "drive");
    if (S(o, "drive_id") != id) throw ApiError{"The id from the path does not match the id from the body!"};
    NoteConfig("drive");
    int fd2 = ::open(S(o, "path_on_host").c_str(), B(o, "is_read_only") ? O_RDONLY : O_RDWR);
    if (fd2 < 0) throw ApiError{"Unable to create the block device: cannot open " + S(o, "path_on_host")};
    ::close(fd2);
    g_vm.drives[id] = o;
    return {};
  }
  if (r.path.rfind("/network-interfaces/", 0) == 0) {
    std::string id = PathId(r.path, "/network-interfaces/");
    CheckFields(o,
                {{"iface_id", T::kString, true},
                 {"host_dev_name", T::kString, true},
                 {"guest_mac", T::kString, false},
                 {"rx_rate_limiter", T::kObject, false},
                 {"tx_rate_limiter", T::kObject, false}},
                "network-interface");
    if (S(o, "iface_id") != id) throw ApiError{"The id from the path does not match the id from the body!"};
    NoteConfig("network-interface");
    CheckTap(S(o, "host_dev_name"));
    g_vm.nets[id] = o;
    return {};
  }
  if (r.path == "/vsock") {
    CheckFields(
        o, {{"guest_cid", T::kUint, true}, {"uds_path", T::kString, true}, {"vsock_id", T::kString, false}},
        "vsock");
    NoteConfig("vsock");
    if (U(o, "guest_cid") < 3) throw ApiError{"vsock: guest_cid must be >= 3"};
    g_vm.vsock = o;
    return {};
  }
  if (r.path == "/entropy") {
    if (!g_version.AtLeast(1, 4)) throw ApiError{"Invalid request method and/or path: " + key};
    CheckFields(o, {{"rate_limiter", T::kObject, false}}, "entropy");
    NoteConfig("entropy");
    return {};
  }
  if (r.path == "/actions") {
    CheckFields(o, {{"action_type", T::kString, true}}, "actions");
    std::string a = S(o, "action_type");
    if (a == "InstanceStart") {
      RequireNotStarted("InstanceStart");
      if (!g_vm.boot_source) throw ApiError{"Cannot start microvm without kernel configuration."};
      if (g_vm.vsock) BindVsock(S(*g_vm.vsock, "uds_path"));
      g_vm.booted = true;
      std::random_device rd;
      g_vm.boot_id = std::to_string(rd()) + "-" + std::to_string(rd());
      return {};
    }
    if (a == "FlushMetrics" || a == "SendCtrlAltDel") {
      if (!g_vm.Running())
        throw ApiError{"The requested operation is not supported before starting the microVM."};
      return {};
    }
    throw ApiError{"actions: unknown variant `" + a + "`"};
  }
  if (r.path == "/snapshot/create") {
    CheckFields(o,
                {{"snapshot_type", T::kString, false},
                 {"snapshot_path", T::kString, true},
                 {"mem_file_path", T::kString, true}},
                "snapshot/create");
    std::string type = o.contains("snapshot_type") ? S(o, "snapshot_type") : "Full";
    if (type != "Full" && type != "Diff") throw ApiError{"snapshot_type: unknown variant `" + type + "`"};
    if (!g_vm.Running() || !g_vm.paused) {
      throw ApiError{"Create snapshot error: the microVM must be paused (state: " + g_vm.StateName() + ")"};
    }
    if (type == "Diff" && !B(g_vm.machine, "track_dirty_pages")) {
      throw ApiError{"Diff snapshots are not allowed on uVMs with dirty page tracking disabled."};
    }
    json::array drives, nets;
    for (auto& [id, d] : g_vm.drives) drives.push_back(d);
    for (auto& [id, n] : g_vm.nets) nets.push_back(n);
    json::object state{{"magic", "fake-firecracker-state"},
                       {"snapshot_version", g_snapshot_version},
                       {"machine", g_vm.machine},
                       {"drives", drives},
                       {"nets", nets},
                       {"vsock", g_vm.vsock ? json::value(*g_vm.vsock) : nullptr},
                       {"boot_id", g_vm.boot_id},
                       {"hostname", g_vm.hostname}};
    std::ofstream sf(S(o, "snapshot_path"), std::ios::trunc);
    if (!sf) throw ApiError{"Create snapshot error: cannot open " + S(o, "snapshot_path")};
    sf << json::serialize(state);
    sf.close();
    int mfd = ::open(S(o, "mem_file_path").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (mfd < 0) throw ApiError{"Create snapshot error: cannot open " + S(o, "mem_file_path")};
    std::string page(4096, 'M');
    ssize_t w = ::write(mfd, page.data(), page.size());
    (void)w;
    if (::ftruncate(mfd, static_cast<off_t>(U(g_vm.machine, "mem_size_mib")) << 20) != 0) {
      ::close(mfd);
      throw ApiError{"Create snapshot error: cannot size memory file"};
    }
    ::close(mfd);
    return {};
  }
  if (r.path == "/snapshot/load") {
    std::vector<Field> fields{{"snapshot_path", T::kString, true}, {"resume_vm", T::kBool, false}};
    if (g_version.AtLeast(1, 1)) fields.push_back({"mem_backend", T::kObject, false});
    fields.push_back({"mem_file_path", T::kString, false});
    if (g_version.AtLeast(1, 13)) {
      fields.push_back({"track_dirty_pages", T::kBool, false});
    } else {
      fields.push_back({"enable_diff_snapshots", T::kBool, false});
    }
    if (g_version.AtLeast(1, 12)) fields.push_back({"network_overrides", T::kArray, false});
    if (g_version.AtLeast(1, 16)) fields.push_back({"vsock_override", T::kObject, false});
    CheckFields(o, fields, "snapshot/load");
    if (g_vm.Running())
      throw ApiError{"Loading a microVM snapshot not allowed after configuring boot-specific resources."};
    if (g_vm.configured) {
      throw ApiError{"Loading a microVM snapshot not allowed after configuring boot-specific resources."};
    }
    bool has_backend = o.contains("mem_backend"), has_file = o.contains("mem_file_path");
    if (has_backend == has_file)
      throw ApiError{"snapshot/load: exactly one of mem_backend and mem_file_path is required"};
    std::string mem_path = has_file ? S(o, "mem_file_path") : "";
    std::string backend_type = "File";
    if (has_backend) {
      const auto& mb = o.at("mem_backend").as_object();
      CheckFields(mb, {{"backend_type", T::kString, true}, {"backend_path", T::kString, true}},
                  "mem_backend");
      backend_type = S(mb, "backend_type");
      if (backend_type != "File" && backend_type != "Uffd")
        throw ApiError{"backend_type: unknown variant `" + backend_type + "`"};
      mem_path = S(mb, "backend_path");
    }
    std::map<std::string, std::string> tap_override;
    if (o.contains("network_overrides")) {
      for (const auto& e : o.at("network_overrides").as_array()) {
        if (!e.is_object()) throw ApiError{"network_overrides: entries must be objects"};
        CheckFields(e.as_object(), {{"iface_id", T::kString, true}, {"host_dev_name", T::kString, true}},
                    "network_overrides");
        tap_override[S(e.as_object(), "iface_id")] = S(e.as_object(), "host_dev_name");
      }
    }
    std::string vsock_override;
    if (o.contains("vsock_override")) {
      CheckFields(o.at("vsock_override").as_object(), {{"uds_path", T::kString, true}}, "vsock_override");
      vsock_override = S(o.at("vsock_override").as_object(), "uds_path");
    }
    // From here on, a failure ends the process (as Firecracker does after a failed load).
    std::ifstream sf(S(o, "snapshot_path"));
    if (!sf) FailLoadAndExit(fd, "Load snapshot error: cannot open snapshot file " + S(o, "snapshot_path"));
    std::string text((std::istreambuf_iterator<char>(sf)), std::istreambuf_iterator<char>());
    json::value sv = json::parse(text, ec);
    if (ec || !sv.is_object() || S(sv.as_object(), "magic") != "fake-firecracker-state") {
      FailLoadAndExit(fd, "Load snapshot error: invalid snapshot file");
    }
    const json::object& st = sv.as_object();
    if (S(st, "snapshot_version") != g_snapshot_version) {
      FailLoadAndExit(fd, "Load snapshot error: Snapshot version mismatch: the file has " +
                              S(st, "snapshot_version") + ", this Firecracker reads " + g_snapshot_version);
    }
    if (backend_type == "File") {
      struct stat ms {};
      if (::stat(mem_path.c_str(), &ms) != 0)
        FailLoadAndExit(fd, "Load snapshot error: cannot open memory file " + mem_path);
      uint64_t want = U(st.at("machine").as_object(), "mem_size_mib") << 20;
      if (static_cast<uint64_t>(ms.st_size) != want)
        FailLoadAndExit(fd, "Load snapshot error: memory file size mismatch");
    } else {
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, mem_path.c_str(), sizeof(addr.sun_path) - 1);
      int u = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(u, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        FailLoadAndExit(fd, "Load snapshot error: cannot connect to the uffd handler at " + mem_path);
      }
      ::close(u);
    }
    try {
      for (const auto& d : st.at("drives").as_array()) {
        std::string p = S(d.as_object(), "path_on_host");
        int dfd = ::open(p.c_str(), B(d.as_object(), "is_read_only") ? O_RDONLY : O_RDWR);
        if (dfd < 0) throw ApiError{"Load snapshot error: cannot open block device " + p};
        ::close(dfd);
        g_vm.drives[S(d.as_object(), "drive_id")] = d.as_object();
      }
      for (const auto& n : st.at("nets").as_array()) {
        json::object net = n.as_object();
        auto it = tap_override.find(S(net, "iface_id"));
        if (it != tap_override.end()) {
          net["host_dev_name"] = it->second;
          tap_override.erase(it);
        }
        CheckTap(S(net, "host_dev_name"));
        g_vm.nets[S(net, "iface_id")] = net;
      }
      if (!tap_override.empty()) {
        throw ApiError{"Load snapshot error: network override for unknown interface " +
                       tap_override.begin()->first};
      }
      if (st.at("vsock").is_object()) {
        g_vm.vsock = st.at("vsock").as_object();
        BindVsock(vsock_override.empty() ? S(*g_vm.vsock, "uds_path") : vsock_override);
      } else if (!vsock_override.empty()) {
        throw ApiError{"Load snapshot error: vsock_override given but the snapshot has no vsock device"};
      }
    } catch (const ApiError& e) {
      FailLoadAndExit(fd, e.msg);
    }
    g_vm.machine = st.at("machine").as_object();
    if (B(o, "track_dirty_pages") || B(o, "enable_diff_snapshots")) g_vm.machine["track_dirty_pages"] = true;
    g_vm.boot_id = S(st, "boot_id");
    g_vm.hostname = S(st, "hostname");
    g_vm.loaded = true;
    g_vm.paused = !B(o, "resume_vm");
    return {};
  }
  throw ApiError{"Invalid request method and/or path: " + key};
}

// ---- connections
// ---------------------------------------------------------------------------------------------

enum class Kind { kApi, kVsockHandshake, kAgent };

struct Conn {
  int fd;
  Kind kind;
  std::string in;
};

std::vector<Conn> g_conns;

void SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

void SendReply(int fd, const Reply& rep) {
  const char* reason = rep.status == 200 ? "OK" : rep.status == 204 ? "No Content" : "Bad Request";
  std::string out =
      "HTTP/1.1 " + std::to_string(rep.status) + " " + reason + "\r\nServer: Firecracker API\r\n";
  if (rep.status != 204) {
    out += "Content-Type: application/json\r\nContent-Length: " + std::to_string(rep.body.size()) + "\r\n";
  }
  out += "\r\n";
  if (rep.status != 204) out += rep.body;
  SendAll(fd, out);
}

void LogRequest(const Request& r, const Reply& rep) {
  std::string path = Env("FCWARM_FAKE_FC_LOG");
  if (path.empty()) return;
  json::object line{{"pid", ::getpid()}, {"method", r.method}, {"path", r.path}, {"status", rep.status}};
  boost::system::error_code ec;
  json::value body = r.has_body ? json::parse(r.body, ec) : json::value(nullptr);
  line["body"] = ec ? json::value(r.body) : body;
  if (rep.status >= 400) line["fault"] = json::parse(rep.body).as_object().at("fault_message");
  std::ofstream f(path, std::ios::app);
  f << json::serialize(line) << "\n";
}

Request* g_current = nullptr;

void FailLoadAndExit(int fd, const std::string& msg) {
  Reply rep = Fault(msg);
  if (g_current) LogRequest(*g_current, rep);
  SendReply(fd, rep);
  std::cerr << "Load snapshot failed: " << msg << "\n";
  ::_exit(1);
}

// Parses complete requests from c.in; returns false when the connection must close.
bool ServeApi(Conn& c) {
  while (true) {
    size_t end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) return c.in.size() < 65536;
    std::string head = c.in.substr(0, end);
    Request r;
    size_t line_end = head.find("\r\n");
    std::string line = head.substr(0, line_end);
    size_t s1 = line.find(' '), s2 = line.rfind(' ');
    Reply rep;
    size_t consumed = end + 4;
    bool close_after = false;
    if (s1 == std::string::npos || s1 == s2 || line.substr(s2 + 1) != "HTTP/1.1") {
      rep = Fault("Invalid HTTP request line: " + line);
      close_after = true;
    } else {
      r.method = line.substr(0, s1);
      r.path = line.substr(s1 + 1, s2 - s1 - 1);
      size_t content_length = 0;
      bool has_length = false;
      size_t pos = line_end;
      while (pos != std::string::npos && pos < head.size()) {
        size_t next = head.find("\r\n", pos + 2);
        std::string h = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
        pos = next;
        std::string lower;
        for (char ch : h) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
        if (lower.rfind("content-length:", 0) == 0) {
          content_length = std::stoul(h.substr(15));
          has_length = true;
        }
        if (lower.rfind("transfer-encoding:", 0) == 0) {
          rep = Fault("Transfer-Encoding is not supported");
          close_after = true;
        }
      }
      if (c.in.size() < consumed + content_length) return true;  // wait for the body
      r.body = c.in.substr(consumed, content_length);
      r.has_body = has_length && content_length > 0;
      consumed += content_length;
      if (!close_after) {
        g_current = &r;
        try {
          rep = Handle(r, c.fd);
        } catch (const ApiError& e) {
          rep = Fault(e.msg);
        } catch (const std::exception& e) {
          rep = Fault(std::string("bad request: ") + e.what());
        }
        g_current = nullptr;
      }
    }
    c.in.erase(0, consumed);
    LogRequest(r, rep);
    SendReply(c.fd, rep);
    if (close_after) return false;
  }
}

std::string AgentReply(const std::string& line) {
  boost::system::error_code ec;
  json::value v = json::parse(line, ec);
  if (ec || !v.is_object()) {
    return json::serialize(json::object{{"v", 1},
                                        {"id", nullptr},
                                        {"ok", false},
                                        {"error", {{"code", "bad_request"}, {"message", "malformed JSON"}}}});
  }
  const json::object& o = v.as_object();
  json::value id = o.contains("id") ? o.at("id") : json::value(nullptr);
  std::string op = S(o, "op");
  json::object result;
  if (op == "ping") {
    result = {{"agent_version", "fake"},
              {"protocol", 1},
              {"boot_id", g_vm.boot_id},
              {"uptime_ms", 1},
              {"hostname", g_vm.hostname}};
  } else if (op == "identity") {
    if (o.contains("hostname")) g_vm.hostname = S(o, "hostname");
    result = {{"hostname", g_vm.hostname},
              {"iface", "eth0"},
              {"mac", S(o, "mac")},
              {"ip_cidr", S(o, "ip_cidr")},
              {"entropy_bytes", S(o, "entropy_b64").size() * 3 / 4},
              {"clock_set", o.contains("wall_clock_ns")}};
  } else if (op == "runtime_ready") {
    result = {{"ready", true}, {"detail", "fake agent"}};
  } else if (op == "quiesce") {
    result = {{"synced", true}};
  } else if (op == "exec") {
    result = {{"exit_code", 0}, {"stdout_b64", ""}, {"stderr_b64", ""}, {"truncated", false}};
  } else {
    return json::serialize(json::object{
        {"v", 1}, {"id", id}, {"ok", false}, {"error", {{"code", "unknown_op"}, {"message", op}}}});
  }
  return json::serialize(json::object{{"v", 1}, {"id", id}, {"ok", true}, {"result", result}});
}

// Returns false when the connection must close.
bool ServeVsock(Conn& c) {
  while (true) {
    size_t nl = c.in.find('\n');
    if (nl == std::string::npos) return c.in.size() < 65536;
    std::string line = c.in.substr(0, nl);
    c.in.erase(0, nl + 1);
    if (c.kind == Kind::kVsockHandshake) {
      unsigned port = 0;
      if (std::sscanf(line.c_str(), "CONNECT %u", &port) != 1) return false;
      unsigned agent_port = static_cast<unsigned>(std::stoul(Env("FCWARM_FAKE_FC_AGENT_PORT", "52")));
      // Nothing listens on other ports; a paused guest cannot accept.
      if (port != agent_port || g_vm.paused) return false;
      SendAll(c.fd, "OK 1073741824\n");
      c.kind = Kind::kAgent;
      continue;
    }
    SendAll(c.fd, AgentReply(line) + "\n");
  }
}

int Run(const std::string& api_sock) {
  int api = Listen(api_sock);
  if (api < 0) {
    std::cerr << "Failed to open the API socket at " << api_sock << ": " << std::strerror(errno) << "\n";
    return 1;
  }
  while (true) {
    std::vector<pollfd> fds;
    fds.push_back({api, POLLIN, 0});
    if (g_vm.vsock_listen >= 0) fds.push_back({g_vm.vsock_listen, POLLIN, 0});
    for (const auto& c : g_conns) fds.push_back({c.fd, POLLIN, 0});
    int n = ::poll(fds.data(), fds.size(), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return 1;
    size_t base = 1;
    std::vector<Conn> added;
    if (fds[0].revents & POLLIN) {
      int c = ::accept4(api, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) added.push_back({c, Kind::kApi, ""});
    }
    if (g_vm.vsock_listen >= 0 && fds.size() > 1 && fds[1].fd == g_vm.vsock_listen) {
      base = 2;
      if (fds[1].revents & POLLIN) {
        int c = ::accept4(g_vm.vsock_listen, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) added.push_back({c, Kind::kVsockHandshake, ""});
      }
    }
    std::vector<Conn> keep;
    for (size_t i = 0; i < g_conns.size(); ++i) {
      Conn& c = g_conns[i];
      short re = fds[base + i].revents;
      bool alive = true;
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        char buf[8192];
        ssize_t got = ::recv(c.fd, buf, sizeof(buf), 0);
        if (got <= 0) {
          alive = false;
        } else {
          c.in.append(buf, static_cast<size_t>(got));
          alive = c.kind == Kind::kApi ? ServeApi(c) : ServeVsock(c);
        }
      }
      if (alive) {
        keep.push_back(std::move(c));
      } else {
        ::close(c.fd);
      }
    }
    g_conns = std::move(keep);
    for (auto& c : added) g_conns.push_back(std::move(c));
  }
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  std::string ver = Env("FCWARM_FAKE_FC_VERSION", "1.14.2");
  if (std::sscanf(ver.c_str(), "%d.%d.%d", &g_version.major, &g_version.minor, &g_version.patch) < 2) {
    std::cerr << "bad FCWARM_FAKE_FC_VERSION\n";
    return 2;
  }
  g_snapshot_version =
      Env("FCWARM_FAKE_FC_SNAPSHOT_VERSION",
          g_version.minor >= 7 ? "v" + std::to_string(g_version.minor - 6) + ".0.0" : "v" + g_version.Text());
  std::string api_sock;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--version") {
      std::cout << "Firecracker v" << g_version.Text() << "\n\n";
      return 0;
    }
    if (a == "--snapshot-version") {
      std::cout << g_snapshot_version << "\n";
      return 0;
    }
    if (a == "--api-sock" && i + 1 < argc) {
      api_sock = argv[++i];
    } else if (a == "--id" && i + 1 < argc) {
      g_instance_id = argv[++i];
    } else {
      std::cerr << "Arguments parsing error: unexpected argument '" << a << "'\n";
      return 1;
    }
  }
  if (api_sock.empty()) api_sock = "/run/firecracker.socket";
  std::string exit_code = Env("FCWARM_FAKE_FC_EXIT_AT_START");
  if (!exit_code.empty()) {
    std::cerr << "fake firecracker: exiting at start as asked\n";
    return std::stoi(exit_code);
  }
  if (Env("FCWARM_FAKE_FC_NO_SOCKET") == "1") {
    while (true) ::pause();
  }
  return Run(api_sock);
}
