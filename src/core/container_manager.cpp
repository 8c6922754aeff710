#include "fcwarm/container_manager.hpp"

#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <mutex>
#include <set>
#include <thread>

#include "core/container_request.hpp"
#include "fcwarm/ids.hpp"
#include "store/store_db.hpp"
#include "util/common.hpp"

namespace fcwarm {
namespace json = boost::json;

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxLogBytes = 1 << 20;

const std::pair<ContainerState, std::string_view> kStateNames[] = {
    {ContainerState::kProvisioning, "provisioning"}, {ContainerState::kRunning, "running"},
    {ContainerState::kExited, "exited"},             {ContainerState::kStopped, "stopped"},
    {ContainerState::kFailed, "failed"},             {ContainerState::kLost, "lost"},
    {ContainerState::kDestroyed, "destroyed"},
};

std::string ArgvToJson(const std::vector<std::string>& v) {
  json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return json::serialize(a);
}

std::vector<std::string> ArgvFromJson(std::string_view s) {
  std::vector<std::string> out;
  boost::system::error_code ec;
  auto v = json::parse(json::string_view(s.data(), s.size()), ec);
  if (ec || !v.is_array()) return out;
  for (const auto& e : v.as_array())
    if (e.is_string()) out.emplace_back(e.as_string());
  return out;
}

// Docker's error bodies are {"message": "..."}.
std::string DockerMessage(const DockerResponse& r) {
  boost::system::error_code ec;
  auto v = json::parse(r.body, ec);
  if (!ec && v.is_object()) {
    if (const auto* m = v.as_object().if_contains("message"); m && m->is_string()) return std::string(m->as_string());
  }
  std::string b = r.body.substr(0, 200);
  for (auto& c : b)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return b;
}

// Docker multiplexes stdout/stderr of a non-TTY container: frames of [stream, 0, 0, 0, size32be] + payload.
ContainerLogs Demultiplex(const std::string& body, bool truncated) {
  ContainerLogs out;
  out.truncated = truncated;
  size_t i = 0;
  bool framed = true;
  while (i < body.size()) {
    if (body.size() - i < 8) {
      framed = i == 0 ? false : framed;
      break;
    }
    auto stream = static_cast<unsigned char>(body[i]);
    if (stream > 2 || body[i + 1] != 0 || body[i + 2] != 0 || body[i + 3] != 0) {
      framed = false;
      break;
    }
    size_t n = (static_cast<size_t>(static_cast<unsigned char>(body[i + 4])) << 24) |
               (static_cast<size_t>(static_cast<unsigned char>(body[i + 5])) << 16) |
               (static_cast<size_t>(static_cast<unsigned char>(body[i + 6])) << 8) |
               static_cast<size_t>(static_cast<unsigned char>(body[i + 7]));
    size_t take = std::min(n, body.size() - i - 8);
    std::string& dst = stream == 2 ? out.stderr_data : out.stdout_data;
    dst.append(body, i + 8, take);
    i += 8 + take;
  }
  if (!framed) {  // a TTY container: one raw stream
    out.stdout_data = body;
    out.stderr_data.clear();
  }
  return out;
}

struct Row {
  ContainerRecord rec;
  bool started = false;
  bool force_cold = false;
  std::optional<int64_t> wait_for_creating_ms;
  bool has_logs = false;
  ContainerLogs logs;
  Timings vm_timings;
};

const char* kSelect =
    "SELECT c.id, c.name, c.runtime_image_id, c.runtime, c.image, c.command, c.env, c.force_cold, "
    "c.wait_for_creating_ms, c.state, c.started, c.docker_id, c.exit_code, c.timings, c.last_error, "
    "c.stdout_data IS NOT NULL, c.created_at, c.updated_at, c.started_at, c.finished_at, "
    "COALESCE(v.boot_method, 'cold'), COALESCE(v.fallback_reason, ''), COALESCE(v.snapshot_id, ''), "
    "COALESCE(v.state, ''), COALESCE(v.address, ''), COALESCE(v.hostname, ''), COALESCE(v.timings, '{}'), "
    "COALESCE(v.last_error, ''), COALESCE(v.generation, 0), COALESCE(v.mac, '') FROM containers c LEFT JOIN vms v ON v.id = c.id";

Row ReadRow(SQLite::Statement& q) {
  Row r;
  auto& c = r.rec;
  c.id = q.getColumn(0).getString();
  c.name = q.getColumn(1).getString();
  c.runtime_image_id = q.getColumn(2).getString();
  c.runtime = q.getColumn(3).getString();
  c.container_image = q.getColumn(4).getString();
  c.command = ArgvFromJson(q.getColumn(5).getString());
  c.env = util::StringMapFromJson(q.getColumn(6).getString());
  r.force_cold = q.getColumn(7).getInt() != 0;
  if (!q.getColumn(8).isNull()) r.wait_for_creating_ms = q.getColumn(8).getInt64();
  auto st = ParseContainerState(q.getColumn(9).getString());
  c.state = st.ok() ? *st : ContainerState::kFailed;
  r.started = q.getColumn(10).getInt() != 0;
  c.docker_id = q.getColumn(11).getString();
  if (!q.getColumn(12).isNull()) c.exit_code = q.getColumn(12).getInt();
  c.timings = util::TimingsFromJson(q.getColumn(13).getString());
  c.last_error = q.getColumn(14).getString();
  r.has_logs = q.getColumn(15).getInt() != 0;
  c.created_at = q.getColumn(16).getInt64();
  c.updated_at = q.getColumn(17).getInt64();
  if (!q.getColumn(18).isNull()) c.started_at = q.getColumn(18).getInt64();
  if (!q.getColumn(19).isNull()) c.finished_at = q.getColumn(19).getInt64();
  auto bm = ParseBootMethod(q.getColumn(20).getString());
  c.boot_method = bm.ok() ? *bm : BootMethod::kCold;
  auto fr = ParseFallbackReason(q.getColumn(21).getString());
  c.fallback_reason = fr.ok() ? *fr : FallbackReason::kNone;
  c.snapshot_id = q.getColumn(22).getString();
  c.vm_state = q.getColumn(23).getString();
  c.address = q.getColumn(24).getString();
  c.hostname = q.getColumn(25).getString();
  r.vm_timings = util::TimingsFromJson(q.getColumn(26).getString());
  c.generation = q.getColumn(28).getInt64();
  c.mac = q.getColumn(29).getString();
  // Until the container has its own timings (set when it starts or fails), show its VM's progress.
  if (c.timings.empty()) c.timings = r.vm_timings;
  if (c.last_error.empty() && c.state == ContainerState::kFailed) c.last_error = q.getColumn(27).getString();
  return r;
}

}  // namespace

std::string_view ToString(ContainerState v) {
  for (const auto& [s, n] : kStateNames)
    if (s == v) return n;
  return "unknown";
}

Result<ContainerState> ParseContainerState(std::string_view s) {
  for (const auto& [v, n] : kStateNames)
    if (n == s) return v;
  return Status::InvalidArgument("container state: unknown value '" + std::string(s.substr(0, 64)) + "'");
}

class ContainerManager::Impl {
 public:
  Impl(Store& store, ImageRegistry& images, RestoreEngine& engine, ContainerOptions opts)
      : store_(store), images_(images), engine_(engine), opts_(std::move(opts)) {
    // A fresh process owns no VM: whatever a previous process left provisioning or running is gone.
    auto st = store_.db().With([&](SQLite::Database& db) -> Status {
      auto now = util::NowMillis();
      SQLite::Statement a(db,
                          "UPDATE containers SET state = 'failed', last_error = 'interrupted: the owning process "
                          "restarted while it was provisioning', updated_at = ?, finished_at = ? "
                          "WHERE state = 'provisioning'");
      a.bind(1, now);
      a.bind(2, now);
      int failed = a.exec();
      SQLite::Statement b(db,
                          "UPDATE containers SET state = 'lost', last_error = 'owner process restarted', "
                          "updated_at = ? WHERE state = 'running'");
      b.bind(1, now);
      int lost = b.exec();
      if (failed || lost) {
        spdlog::warn("reconcile: {} container(s) interrupted while provisioning, {} container(s) lost", failed, lost);
      }
      return Status::Ok();
    });
    if (!st.ok()) spdlog::error("containers: reconciliation failed: {}", st.ToString());
  }

  Result<ContainerRecord> Prepare(const ContainerRequest& req) {
    auto image = internal::Validate(req, images_);
    if (!image.ok()) return image.status();
    std::string id = req.id.empty() ? Id::Generate().str() : req.id;
    std::string runtime = internal::RuntimeOf(*image);
    auto st = store_.db().Tx([&](SQLite::Database& db) -> Status {
      for (const char* table : {"containers", "vms"}) {
        SQLite::Statement dup(db, std::string("SELECT 1 FROM ") + table + " WHERE id = ?");
        dup.bind(1, id);
        if (dup.executeStep()) return Status::AlreadyExists("id: a container or VM with id '" + id + "' exists already");
      }
      auto now = util::NowMillis();
      SQLite::Statement q(db,
                          "INSERT INTO containers(id, name, runtime_image_id, runtime, image, command, env, force_cold, "
                          "wait_for_creating_ms, state, created_at, updated_at) "
                          "VALUES (?,?,?,?,?,?,?,?,?,'provisioning',?,?)");
      q.bind(1, id);
      q.bind(2, req.name);
      q.bind(3, image->id);
      q.bind(4, runtime);
      q.bind(5, req.container_image);
      q.bind(6, ArgvToJson(req.command));
      q.bind(7, util::StringMapToJson(req.env));
      q.bind(8, req.force_cold ? 1 : 0);
      if (req.wait_for_creating) {
        q.bind(9, static_cast<int64_t>(req.wait_for_creating->count()));
      } else {
        q.bind(9);
      }
      q.bind(10, now);
      q.bind(11, now);
      q.exec();
      return Status::Ok();
    });
    if (!st.ok()) return st;
    {
      std::lock_guard lock(mu_);
      provisioning_.insert(id);
    }
    return Read(id);
  }

  Result<ContainerRecord> Start(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto t_total = Clock::now();
    auto claimed = store_.db().With([&](SQLite::Database& db) -> Status {
      SQLite::Statement q(db,
                          "UPDATE containers SET started = 1, updated_at = ? WHERE id = ? AND state = 'provisioning' "
                          "AND started = 0");
      q.bind(1, util::NowMillis());
      q.bind(2, id);
      if (q.exec() == 1) return Status::Ok();
      SQLite::Statement e(db, "SELECT state FROM containers WHERE id = ?");
      e.bind(1, id);
      if (!e.executeStep()) return Status::NotFound("container '" + id + "' not found");
      return Status::FailedPrecondition("container '" + id + "' is " + e.getColumn(0).getString() +
                                        " and cannot be started again");
    });
    if (!claimed.ok()) return claimed;
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    struct Done {
      Impl* self;
      std::string id;
      ~Done() {
        std::lock_guard lock(self->mu_);
        self->provisioning_.erase(id);
      }
    } done{this, id};

    ProvisionRequest preq;
    preq.runtime_image_id = row->rec.runtime_image_id;
    preq.vm_id = id;
    preq.name = row->rec.name;
    preq.force_cold = row->force_cold;
    if (row->wait_for_creating_ms) preq.wait_for_creating = std::chrono::milliseconds(*row->wait_for_creating_ms);
    auto vm = engine_.Provision(preq);
    if (!vm.ok()) {
      Timings t;
      if (auto v = engine_.Get(id); v.ok()) t = v->timings;
      Finish(id, ContainerState::kFailed, vm.status().message(), &t);
      return vm.status();
    }
    Timings timings = vm->timings;
    if (auto it = timings.find("total"); it != timings.end()) {
      timings["provision"] = it->second;
      timings.erase(it);
    }
    auto handle = engine_.Handle(id);
    if (!handle.ok()) {
      Finish(id, ContainerState::kFailed, handle.status().message(), &timings);
      (void)engine_.Destroy(id);
      return handle.status();
    }
    Status st = row->rec.runtime == "docker" ? StartDocker(id, row->rec, **handle, timings)
                                             : StartVm(id, row->rec, **handle, timings);
    timings["total"] = util::MsSince(t_total);
    if (!st.ok()) {
      Finish(id, ContainerState::kFailed, st.message(), &timings);
      (void)engine_.Destroy(id);
      spdlog::warn("container {}: start failed: {}", id, st.ToString());
      return st;
    }
    (void)store_.db().With([&](SQLite::Database& db) -> Status {
      SQLite::Statement q(db, "UPDATE containers SET timings = ?, updated_at = ? WHERE id = ?");
      q.bind(1, util::TimingsToJson(timings));
      q.bind(2, util::NowMillis());
      q.bind(3, id);
      q.exec();
      return Status::Ok();
    });
    auto out = Read(id);
    if (out.ok()) {
      spdlog::info("container {} ({}): {} in {:.0f} ms ({} VM{}{})", id, out->runtime, ToString(out->state),
                   timings["total"], ToString(out->boot_method),
                   out->fallback_reason == FallbackReason::kNone ? "" : ", fallback ",
                   ToString(out->fallback_reason));
    }
    return out;
  }

  Status Abandon(const std::string& id, const std::string& reason) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto st = store_.db().With([&](SQLite::Database& db) -> Status {
      auto now = util::NowMillis();
      SQLite::Statement q(db,
                          "UPDATE containers SET state = 'failed', last_error = ?, updated_at = ?, finished_at = ? "
                          "WHERE id = ? AND state = 'provisioning' AND started = 0");
      q.bind(1, reason);
      q.bind(2, now);
      q.bind(3, now);
      q.bind(4, id);
      if (q.exec() == 1) return Status::Ok();
      SQLite::Statement e(db, "SELECT 1 FROM containers WHERE id = ?");
      e.bind(1, id);
      if (!e.executeStep()) return Status::NotFound("container '" + id + "' not found");
      return Status::FailedPrecondition("container '" + id + "' was started already");
    });
    if (st.ok()) {
      std::lock_guard lock(mu_);
      provisioning_.erase(id);
    }
    return st;
  }

  Result<ContainerRecord> Get(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    Refresh(*row);
    return row->rec;
  }

  Result<std::vector<ContainerRecord>> List(bool include_destroyed) {
    auto rows = store_.db().With([&](SQLite::Database& db) -> Result<std::vector<Row>> {
      std::string sql = kSelect;
      if (!include_destroyed) sql += " WHERE c.state != 'destroyed'";
      sql += " ORDER BY c.created_at DESC, c.rowid DESC";
      SQLite::Statement q(db, sql);
      std::vector<Row> out;
      while (q.executeStep()) out.push_back(ReadRow(q));
      return out;
    });
    if (!rows.ok()) return rows.status();
    std::vector<ContainerRecord> out;
    for (auto& r : *rows) {
      Refresh(r);
      out.push_back(std::move(r.rec));
    }
    return out;
  }

  Result<ContainerRecord> Wait(const std::string& id, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    auto poll = std::chrono::milliseconds(20);
    while (true) {
      auto r = Get(id);
      if (!r.ok()) return r;
      if (r->state != ContainerState::kProvisioning && r->state != ContainerState::kRunning) return r;
      if (Clock::now() >= deadline) return r;
      std::this_thread::sleep_for(std::min(poll, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                     deadline - Clock::now()) + std::chrono::milliseconds(1)));
      poll = std::min(poll * 2, std::chrono::milliseconds(200));
    }
  }

  Result<ContainerLogs> Logs(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    if (row->rec.runtime == "docker" && !row->rec.docker_id.empty()) {
      auto live = FetchDockerLogs(row->rec);
      if (live.ok()) return live;
      if (!row->has_logs) return live.status();
    }
    if (row->has_logs) return StoredLogs(id);
    if (row->rec.state == ContainerState::kProvisioning) {
      return Status::FailedPrecondition("container '" + id + "' is still provisioning; it has no output yet");
    }
    if (row->rec.runtime == "vm" && row->rec.command.empty()) {
      return Status::FailedPrecondition("container '" + id +
                                        "' has no command (its VM is the container), so it has no output");
    }
    return Status::FailedPrecondition("container '" + id + "' has no output: " +
                                      (row->rec.last_error.empty() ? std::string("it never started")
                                                                   : row->rec.last_error));
  }

  Result<ContainerRecord> Stop(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    if (row->rec.state == ContainerState::kProvisioning) {
      return Status::FailedPrecondition("container '" + id + "' is still provisioning");
    }
    Refresh(*row);
    // An exited container's output was kept when its exit was seen; fetch it only if that did not happen.
    if (row->rec.state == ContainerState::kRunning || !row->has_logs) CaptureLogs(row->rec);
    if (auto st = engine_.Stop(id); !st.ok() && st.code() != StatusCode::kNotFound) return st;
    if (row->rec.state == ContainerState::kRunning) SetState(id, ContainerState::kStopped, "");
    return Get(id);
  }

  Status Destroy(const std::string& id) {
    if (auto p = Id::Parse("id", id); !p.ok()) return p.status();
    auto row = ReadRowById(id);
    if (!row.ok()) return row.status();
    if (row->rec.state == ContainerState::kProvisioning) {
      return Status::FailedPrecondition("container '" + id + "' is still provisioning; delete it once it runs");
    }
    if (row->rec.state == ContainerState::kDestroyed) return Status::Ok();
    if (auto st = engine_.Destroy(id); !st.ok() && st.code() != StatusCode::kNotFound) return st;
    SetState(id, ContainerState::kDestroyed, row->rec.last_error);
    return Status::Ok();
  }

  std::chrono::milliseconds StartDeadline() const {
    // The VM, then either two Docker requests (create, start) or one command, each with its channel margin.
    constexpr std::chrono::milliseconds kChannelMargin{5000};
    auto docker = 2 * (opts_.docker_timeout + kChannelMargin);
    auto exec = opts_.exec_timeout + kChannelMargin;
    return engine_.ProvisionDeadline() + std::max(docker, exec);
  }

  int Provisioning() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(provisioning_.size());
  }

 private:
  std::string DockerPath(const std::string& rest) const { return "/" + opts_.docker_api_version + rest; }

  Result<DockerResponse> CallDocker(Vm& vm, const std::string& method, const std::string& path, std::string body) {
    DockerRequest r;
    r.method = method;
    r.path = DockerPath(path);
    r.body = std::move(body);
    r.timeout = opts_.docker_timeout;
    return vm.guest().Docker(r, opts_.docker_timeout + std::chrono::seconds(5));
  }

  Status StartDocker(const std::string& id, const ContainerRecord& c, Vm& vm, Timings& timings) {
    json::object spec;
    spec["Image"] = c.container_image;
    if (!c.command.empty()) {
      json::array cmd;
      for (const auto& a : c.command) cmd.emplace_back(a);
      spec["Cmd"] = std::move(cmd);
    }
    json::array env;
    for (const auto& [k, v] : c.env) env.emplace_back(k + "=" + v);
    spec["Env"] = std::move(env);
    spec["Labels"] = json::object{{"org.fcwarm.container", id}};
    // The runtime's dockerd runs without a bridge: containers get loopback only.
    spec["HostConfig"] = json::object{{"NetworkMode", "none"}};
    auto t = Clock::now();
    auto created = CallDocker(vm, "POST", "/containers/create", json::serialize(spec));
    timings["container_create"] = util::MsSince(t);
    if (!created.ok()) return created.status().WithContext("docker create");
    if (created->status != 201) {
      std::string msg = "docker create: HTTP " + std::to_string(created->status) + ": " + DockerMessage(*created);
      return created->status == 404 ? Status::NotFound(msg)
             : created->status < 500 ? Status::InvalidArgument(msg) : Status::Unavailable(msg);
    }
    boost::system::error_code ec;
    auto v = json::parse(created->body, ec);
    std::string docker_id;
    if (!ec && v.is_object()) {
      if (const auto* i = v.as_object().if_contains("Id"); i && i->is_string()) docker_id = std::string(i->as_string());
    }
    if (docker_id.size() < 12 || docker_id.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return Status::Unavailable("docker create: reply has no container Id: " + DockerMessage(*created));
    }
    (void)store_.db().With([&](SQLite::Database& db) -> Status {
      SQLite::Statement q(db, "UPDATE containers SET docker_id = ?, updated_at = ? WHERE id = ?");
      q.bind(1, docker_id);
      q.bind(2, util::NowMillis());
      q.bind(3, id);
      q.exec();
      return Status::Ok();
    });
    t = Clock::now();
    auto started = CallDocker(vm, "POST", "/containers/" + docker_id + "/start", "");
    timings["container_start"] = util::MsSince(t);
    if (!started.ok()) return started.status().WithContext("docker start");
    if (started->status != 204 && started->status != 304) {
      return Status::Unavailable("docker start: HTTP " + std::to_string(started->status) + ": " +
                                 DockerMessage(*started));
    }
    return MarkRunning(id);
  }

  Status MarkRunning(const std::string& id) {
    return store_.db().With([&](SQLite::Database& db) -> Status {
      auto now = util::NowMillis();
      SQLite::Statement q(db,
                          "UPDATE containers SET state = 'running', started_at = ?, updated_at = ? WHERE id = ?");
      q.bind(1, now);
      q.bind(2, now);
      q.bind(3, id);
      q.exec();
      return Status::Ok();
    });
  }

  Status StartVm(const std::string& id, const ContainerRecord& c, Vm& vm, Timings& timings) {
    if (c.command.empty()) return MarkRunning(id);
    auto now = util::NowMillis();
    ExecRequest er;
    if (c.env.empty()) {
      er.argv = c.command;
    } else {  // env(1) sets the variables without a shell
      er.argv = {"env"};
      for (const auto& [k, v] : c.env) er.argv.push_back(k + "=" + v);
      er.argv.insert(er.argv.end(), c.command.begin(), c.command.end());
    }
    er.timeout = opts_.exec_timeout;
    auto t = Clock::now();
    auto r = vm.guest().Exec(er, opts_.exec_timeout + std::chrono::seconds(5));
    timings["exec"] = util::MsSince(t);
    if (!r.ok()) return r.status().WithContext("command");
    return store_.db().With([&](SQLite::Database& db) -> Status {
      auto end = util::NowMillis();
      SQLite::Statement q(db,
                          "UPDATE containers SET state = 'exited', exit_code = ?, stdout_data = ?, stderr_data = ?, "
                          "logs_truncated = ?, started_at = ?, finished_at = ?, updated_at = ? WHERE id = ?");
      q.bind(1, r->exit_code);
      q.bind(2, r->stdout_data.data(), static_cast<int>(r->stdout_data.size()));
      q.bind(3, r->stderr_data.data(), static_cast<int>(r->stderr_data.size()));
      q.bind(4, r->truncated ? 1 : 0);
      q.bind(5, now);
      q.bind(6, end);
      q.bind(7, end);
      q.bind(8, id);
      q.exec();
      return Status::Ok();
    });
  }

  // Asks the daemon about a running docker container; records an exit (with its output).
  void Refresh(Row& row) {
    auto& c = row.rec;
    if (c.runtime != "docker" || c.state != ContainerState::kRunning || c.docker_id.empty()) return;
    auto handle = engine_.Handle(c.id);
    if (!handle.ok()) return;
    auto r = CallDocker(**handle, "GET", "/containers/" + c.docker_id + "/json", "");
    if (!r.ok() || r->status != 200) {
      spdlog::debug("container {}: inspect failed: {}", c.id, r.ok() ? DockerMessage(*r) : r.status().ToString());
      return;
    }
    boost::system::error_code ec;
    auto v = json::parse(r->body, ec);
    if (ec || !v.is_object()) return;
    const auto* state = v.as_object().if_contains("State");
    if (!state || !state->is_object()) return;
    const auto& s = state->as_object();
    std::string status;
    if (const auto* x = s.if_contains("Status"); x && x->is_string()) status = std::string(x->as_string());
    if (status != "exited" && status != "dead") return;
    int code = -1;
    if (const auto* x = s.if_contains("ExitCode"); x && x->is_int64()) code = static_cast<int>(x->as_int64());
    auto logs = FetchDockerLogs(c);
    auto now = util::NowMillis();
    (void)store_.db().With([&](SQLite::Database& db) -> Status {
      SQLite::Statement q(db,
                          "UPDATE containers SET state = 'exited', exit_code = ?, finished_at = ?, updated_at = ? "
                          "WHERE id = ? AND state = 'running'");
      q.bind(1, code);
      q.bind(2, now);
      q.bind(3, now);
      q.bind(4, c.id);
      q.exec();
      return Status::Ok();
    });
    if (logs.ok()) {
      StoreLogs(c.id, *logs);
      row.has_logs = true;
    }
    c.state = ContainerState::kExited;
    c.exit_code = code;
    c.finished_at = now;
    c.updated_at = now;
  }

  Result<ContainerLogs> FetchDockerLogs(const ContainerRecord& c) {
    auto handle = engine_.Handle(c.id);
    if (!handle.ok()) return Status::FailedPrecondition("container '" + c.id + "': its VM is not running");
    auto r = CallDocker(**handle, "GET", "/containers/" + c.docker_id + "/logs?stdout=1&stderr=1", "");
    if (!r.ok()) return r.status().WithContext("docker logs");
    if (r->status != 200) {
      return Status::Unavailable("docker logs: HTTP " + std::to_string(r->status) + ": " + DockerMessage(*r));
    }
    return Demultiplex(r->body, r->truncated);
  }

  // Keeps a copy of a docker container's output before its VM goes away.
  void CaptureLogs(const ContainerRecord& c) {
    if (c.runtime != "docker" || c.docker_id.empty()) return;
    auto logs = FetchDockerLogs(c);
    if (logs.ok()) StoreLogs(c.id, *logs);
  }

  void StoreLogs(const std::string& id, ContainerLogs logs) {
    bool cut = logs.truncated;
    if (logs.stdout_data.size() > kMaxLogBytes) logs.stdout_data.resize(kMaxLogBytes), cut = true;
    if (logs.stderr_data.size() > kMaxLogBytes) logs.stderr_data.resize(kMaxLogBytes), cut = true;
    (void)store_.db().With([&](SQLite::Database& db) -> Status {
      SQLite::Statement q(db,
                          "UPDATE containers SET stdout_data = ?, stderr_data = ?, logs_truncated = ? WHERE id = ?");
      q.bind(1, logs.stdout_data.data(), static_cast<int>(logs.stdout_data.size()));
      q.bind(2, logs.stderr_data.data(), static_cast<int>(logs.stderr_data.size()));
      q.bind(3, cut ? 1 : 0);
      q.bind(4, id);
      q.exec();
      return Status::Ok();
    });
  }

  Result<ContainerLogs> StoredLogs(const std::string& id) {
    return store_.db().With([&](SQLite::Database& db) -> Result<ContainerLogs> {
      SQLite::Statement q(db, "SELECT stdout_data, stderr_data, logs_truncated FROM containers WHERE id = ?");
      q.bind(1, id);
      if (!q.executeStep()) return Status::NotFound("container '" + id + "' not found");
      ContainerLogs l;
      auto blob = [&](int col) {
        auto c = q.getColumn(col);
        return c.isNull() ? std::string() : std::string(static_cast<const char*>(c.getBlob()), c.getBytes());
      };
      l.stdout_data = blob(0);
      l.stderr_data = blob(1);
      l.truncated = q.getColumn(2).getInt() != 0;
      return l;
    });
  }

  void Finish(const std::string& id, ContainerState state, const std::string& error, const Timings* timings) {
    (void)store_.db().With([&](SQLite::Database& db) -> Status {
      auto now = util::NowMillis();
      SQLite::Statement q(db,
                          "UPDATE containers SET state = ?, last_error = ?, timings = COALESCE(?, timings), "
                          "finished_at = ?, updated_at = ? WHERE id = ?");
      q.bind(1, std::string(ToString(state)));
      q.bind(2, error);
      if (timings) {
        q.bind(3, util::TimingsToJson(*timings));
      } else {
        q.bind(3);
      }
      q.bind(4, now);
      q.bind(5, now);
      q.bind(6, id);
      q.exec();
      return Status::Ok();
    });
  }

  void SetState(const std::string& id, ContainerState state, const std::string& error) {
    (void)store_.db().With([&](SQLite::Database& db) -> Status {
      SQLite::Statement q(db, "UPDATE containers SET state = ?, last_error = ?, updated_at = ? WHERE id = ?");
      q.bind(1, std::string(ToString(state)));
      q.bind(2, error);
      q.bind(3, util::NowMillis());
      q.bind(4, id);
      q.exec();
      return Status::Ok();
    });
  }

  Result<Row> ReadRowById(const std::string& id) {
    return store_.db().With([&](SQLite::Database& db) -> Result<Row> {
      SQLite::Statement q(db, std::string(kSelect) + " WHERE c.id = ?");
      q.bind(1, id);
      if (!q.executeStep()) return Status::NotFound("container '" + id + "' not found");
      return ReadRow(q);
    });
  }

  Result<ContainerRecord> Read(const std::string& id) {
    auto r = ReadRowById(id);
    if (!r.ok()) return r.status();
    return r->rec;
  }

  Store& store_;
  ImageRegistry& images_;
  RestoreEngine& engine_;
  ContainerOptions opts_;
  mutable std::mutex mu_;
  std::set<std::string> provisioning_;
};

ContainerManager::ContainerManager(Store& store, ImageRegistry& images, RestoreEngine& engine,
                                   ContainerOptions options)
    : impl_(std::make_unique<Impl>(store, images, engine, std::move(options))) {}
ContainerManager::~ContainerManager() = default;

Result<ContainerRecord> ContainerManager::Prepare(const ContainerRequest& r) { return impl_->Prepare(r); }
Result<ContainerRecord> ContainerManager::Start(const std::string& id) { return impl_->Start(id); }
Result<ContainerRecord> ContainerManager::Create(const ContainerRequest& r) {
  auto p = impl_->Prepare(r);
  if (!p.ok()) return p;
  return impl_->Start(p->id);
}
Status ContainerManager::Abandon(const std::string& id, const std::string& reason) { return impl_->Abandon(id, reason); }
Result<ContainerRecord> ContainerManager::Get(const std::string& id) { return impl_->Get(id); }
Result<std::vector<ContainerRecord>> ContainerManager::List(bool d) { return impl_->List(d); }
Result<ContainerRecord> ContainerManager::Wait(const std::string& id, std::chrono::milliseconds t) {
  return impl_->Wait(id, t);
}
Result<ContainerLogs> ContainerManager::Logs(const std::string& id) { return impl_->Logs(id); }
Result<ContainerRecord> ContainerManager::Stop(const std::string& id) { return impl_->Stop(id); }
Status ContainerManager::Destroy(const std::string& id) { return impl_->Destroy(id); }
int ContainerManager::Provisioning() const { return impl_->Provisioning(); }
std::chrono::milliseconds ContainerManager::StartDeadline() const { return impl_->StartDeadline(); }

}  // namespace fcwarm
