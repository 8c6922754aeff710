// The QEMU backend: one QEMU process (machine microvm) per VM and per restore, controlled through QMP
// (docs/qemu-backend.md).
#include "fcwarm/qemu_vmm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "backends/host_leftovers.hpp"
#include "backends/qemu/qemu_config.hpp"
#include "backends/qemu/qmp_client.hpp"
#include "guest/line_stream.hpp"
#include "guest/stream_channel.hpp"
#include "net/egress.hpp"
#include "net/netns.hpp"
#include "net/ports.hpp"
#include "backends/host_rules.hpp"
#include "util/common.hpp"
#include "util/failpoint.hpp"
#include "util/process.hpp"

namespace fcwarm {
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using qemu::Sidecar;
using qemu::VmConfig;

namespace {

constexpr size_t kMaxSunPath = 107;

std::string Join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

std::chrono::milliseconds Left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? left : 0ms;
}

// The last `max` bytes of a file, one line per " | ", without control characters.
std::string Tail(const std::string& path, size_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  struct stat st {};
  std::string data;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    off_t start = st.st_size > static_cast<off_t>(max) ? st.st_size - static_cast<off_t>(max) : 0;
    data.resize(static_cast<size_t>(st.st_size - start));
    ssize_t n = ::pread(fd, data.data(), data.size(), start);
    data.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  ::close(fd);
  std::string out;
  for (char c : data) {
    if (c == '\n') {
      if (!out.empty() && out.substr(out.size() - std::min<size_t>(3, out.size())) != " | ") out += " | ";
    } else if (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) {
      out.push_back(c);
    }
  }
  while (out.size() >= 3 && out.substr(out.size() - 3) == " | ") out.resize(out.size() - 3);
  return out;
}


bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// "qcow2" when the file starts with the qcow2 magic, else "raw".
std::string ImageFormat(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "raw";
  unsigned char magic[4] = {};
  ssize_t n = ::pread(fd, magic, sizeof(magic), 0);
  ::close(fd);
  return (n == 4 && magic[0] == 'Q' && magic[1] == 'F' && magic[2] == 'I' && magic[3] == 0xfb) ? "qcow2"
                                                                                               : "raw";
}

// Copies a file keeping holes (SEEK_DATA/SEEK_HOLE + copy_file_range). `dst` must not exist. A full file
// system is ResourceExhausted (the caller removes the partial copy with its directory).
Status CopySparse(const std::string& src, const std::string& dst) {
  guest::UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return Status::Unavailable("open " + src + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return Status::Unavailable("stat " + src + ": " + std::strerror(errno));
  guest::UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
  if (!out.valid()) return util::ErrnoStatus(errno, "create " + dst);
  if (::ftruncate(out.get(), st.st_size) != 0) return util::ErrnoStatus(errno, "truncate " + dst);
  off_t pos = 0;
  std::vector<char> buf;
  while (pos < st.st_size) {
    off_t data = ::lseek(in.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      data = pos;                 // SEEK_DATA unsupported: copy everything
    }
    off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
    if (hole < 0) hole = st.st_size;
    off_t off_in = data, off_out = data;
    while (off_in < hole) {
      ssize_t n =
          ::copy_file_range(in.get(), &off_in, out.get(), &off_out, static_cast<size_t>(hole - off_in), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        buf.resize(1 << 20);
        ssize_t r = ::pread(in.get(), buf.data(),
                            std::min<size_t>(buf.size(), static_cast<size_t>(hole - off_in)), off_in);
        if (r <= 0) return Status::Unavailable("read " + src + ": " + std::strerror(errno));
        ssize_t w = ::pwrite(out.get(), buf.data(), static_cast<size_t>(r), off_out);
        // A short write is how a full file system shows first; the next one would fail with ENOSPC.
        if (w != r) return util::ErrnoStatus(w < 0 ? errno : ENOSPC, "write " + dst);
        off_in += r;
        off_out += r;
        continue;
      }
      if (n < 0) return util::ErrnoStatus(errno, "copy " + src + " to " + dst);
      if (n == 0) break;
    }
    pos = hole;
  }
  if (::fsync(out.get()) != 0) return util::ErrnoStatus(errno, "fsync " + dst);
  return Status::Ok();
}

Status FsyncFile(const std::string& path) {
  guest::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return util::ErrnoStatus(errno, "fsync " + path);
  return Status::Ok();
}

std::string ResolveAccel(const std::string& accel) {
  if (accel == "auto") {
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      ::close(fd);
      return "kvm";
    }
    return "tcg";
  }
  return accel;
}

Result<std::string> QemuVersion(const QemuOptions& o) {
  auto bin = util::FindProgram(o.qemu_binary, true);
  if (!bin) return Status::NotFound("QEMU binary '" + o.qemu_binary + "' not found or not executable");
  auto r = util::Run({*bin, "--version"}, o.tool_timeout);
  if (!r.ok()) return r.status().WithContext(o.qemu_binary + " --version");
  if (r->exit_code != 0) {
    return Status::Unavailable(o.qemu_binary + " --version failed (exit " + std::to_string(r->exit_code) +
                               "): " + r->output.substr(0, 300));
  }
  auto pos = r->output.find("version ");
  if (pos == std::string::npos) return Status::Unavailable(o.qemu_binary + " --version printed no version");
  auto end = r->output.find_first_of(" \n", pos + 8);
  return r->output.substr(pos + 8, end == std::string::npos ? std::string::npos : end - pos - 8);
}

// ---------------------------------------------------------------------------------------------------------------
// What the guest channel needs to explain a failure without touching the Vm (no locks shared).
struct ProcessView {
  std::atomic<int> pid{-1};
  std::atomic<bool> exited{false};  // set once the Vm reaped it (the pid may then be reused)
  std::string work_dir;

  std::string Explain() const {
    std::string msg;
    int p = pid.load();
    if (exited.load()) {
      msg = "QEMU has exited";
    } else if (p > 0) {
      // The sockets close while the process exits, a moment before it turns into a zombie: look for a short
      // while.
      auto deadline = Clock::now() + 250ms;
      while (true) {
        std::ifstream f("/proc/" + std::to_string(p) + "/stat");
        std::string line;
        std::getline(f, line);
        auto close = line.rfind(')');
        char state = close != std::string::npos && close + 2 < line.size() ? line[close + 2] : '?';
        if (!f || state == 'Z' || state == 'X' || state == '?') {
          msg = "QEMU (pid " + std::to_string(p) + ") has exited";
          break;
        }
        if (Clock::now() >= deadline) break;
        std::this_thread::sleep_for(5ms);
      }
    } else {
      msg = "QEMU is not running";
    }
    if (msg.empty()) return "";
    std::string err = Tail(Join(work_dir, qemu::kQemuLog), 600);
    std::string con = Tail(Join(work_dir, qemu::kConsoleLog), 800);
    if (!err.empty()) msg += "; qemu stderr: " + err;
    if (!con.empty()) msg += "; console: " + con;
    return msg;
  }
};

// ---------------------------------------------------------------------------------------------------------------

class QemuVm final : public Vm {
 public:
  QemuVm(const QemuOptions& options, VmConfig cfg, std::string qemu_version,
         std::function<void(int)> on_started, bool outlive_owner)
      : qemu_version_(std::move(qemu_version)),
        opt_(options),
        cfg_(std::move(cfg)),
        on_started_(std::move(on_started)),
        outlive_owner_(outlive_owner) {
    view_ = std::make_shared<ProcessView>();
    view_->work_dir = cfg_.work_dir;
    auto view = view_;
    guest::StreamChannelOptions copt;
    copt.label = "vm " + cfg_.name + ": ";
    copt.diagnose = [view] { return view->Explain(); };
    std::string sock = Join(cfg_.work_dir, qemu::kAgentSock);
    guest_ = guest::MakeStreamGuestChannel(
        [sock](std::chrono::milliseconds t) { return guest::ConnectUnixStream(sock, t); }, copt);
  }

  ~QemuVm() override { (void)Stop(opt_.destroy_grace); }

  // Creates the per-VM resources and starts QEMU. On error everything is released.
  // `rules`: the VM's egress rules and published ports (host_veth set), applied once its namespace exists.
  Status Start(const std::string& base_disk, const std::string& base_format, const net::NetnsPlan* net_plan,
               const HostRules& rules) {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = StartLocked(base_disk, base_format, net_plan, rules);
    if (!st.ok()) (void)StopLocked(0ms);
    return st;
  }

  // Takes over the running QEMU process `target` an earlier process started for this VM (live restore). On
  // error nothing is released: the object lets go of whatever it looked at.
  Status Adopt(const net::NetnsPlan* net_plan, const HostRules& rules, const AdoptTarget& target) {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = AdoptLocked(net_plan, rules, target);
    if (!st.ok()) DetachLocked();
    return st;
  }

  // Loads the snapshot in `dir` into this (incoming) VM and resumes it. On error everything is released.
  Status Incoming(const std::string& dir) {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = IncomingLocked(dir);
    if (!st.ok()) (void)StopLocked(0ms);
    return st;
  }

  int pid() const override { return view_->pid.load(); }

  bool IsAlive() override {
    std::lock_guard<std::mutex> lock(mu_);
    return AliveLocked();
  }

  GuestChannel& guest() override { return *guest_; }

  Status Pause() override {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = Qmp("stop", nullptr, opt_.qmp_timeout).status();
    return st.ok() ? st : st.WithContext("pause of vm " + cfg_.name);
  }

  Status Resume() override {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = Qmp("cont", nullptr, opt_.qmp_timeout).status();
    return st.ok() ? st : st.WithContext("resume of vm " + cfg_.name);
  }

  Status Snapshot(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto st = SnapshotLocked(dir);
    return st.ok() ? st : st.WithContext("snapshot of vm " + cfg_.name + " into " + dir);
  }

  Status Stop(std::chrono::milliseconds grace) override {
    std::lock_guard<std::mutex> lock(mu_);
    return StopLocked(grace);
  }

  Status Detach() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return Status::FailedPrecondition("vm " + cfg_.name + " is stopped");
    if (!outlive_owner_ && !foreign_) {
      return Status::FailedPrecondition("vm " + cfg_.name + " dies with this process (not started to outlive it)");
    }
    DetachLocked();
    return Status::Ok();
  }

  std::string console_log() const override { return Join(cfg_.work_dir, qemu::kConsoleLog); }

 private:
  bool AliveLocked() {
    int p = view_->pid.load();
    if (p <= 0) return false;
    if (exit_status_) return false;
    if (foreign_) {  // not our child: its pidfd tells
      if (!foreign_->Exited()) return true;
      exit_status_ = 0;
      view_->exited.store(true);
      return false;
    }
    if (auto s = util::TryReap(p)) {
      exit_status_ = *s;
      view_->exited.store(true);
      return false;
    }
    return true;
  }

  // " (QEMU exited with ...; qemu stderr: ...; console: ...)" when the process is gone, else the log tails.
  std::string Diagnostics() {
    int p = view_->pid.load();
    std::string msg;
    if (p > 0 && !exit_status_) {
      if (foreign_) {
        if (foreign_->WaitExit(200ms)) exit_status_ = 0;
      } else if (auto s = util::WaitFor(p, 200ms)) {
        exit_status_ = *s;
      }
    }
    if (exit_status_) view_->exited.store(true);
    if (exit_status_ && foreign_) msg = "QEMU (adopted pid " + std::to_string(p) + ") has exited";
    else if (exit_status_) msg = "QEMU exited with " + util::DescribeWaitStatus(*exit_status_);
    std::string err = Tail(Join(cfg_.work_dir, qemu::kQemuLog), 600);
    std::string con = Tail(Join(cfg_.work_dir, qemu::kConsoleLog), 600);
    if (!err.empty()) msg += std::string(msg.empty() ? "" : "; ") + "qemu stderr: " + err;
    if (!con.empty()) msg += std::string(msg.empty() ? "" : "; ") + "console: " + con;
    return msg.empty() ? "" : " (" + msg + ")";
  }

  Result<json::value> Qmp(const std::string& cmd, json::value args, std::chrono::milliseconds timeout,
                          int pass_fd = -1) {
    if (stopped_) return Status::FailedPrecondition("vm " + cfg_.name + " is stopped");
    if (!qmp_.connected()) {
      if (!AliveLocked()) return Status::Unavailable("QMP " + cmd + ": QEMU is not running" + Diagnostics());
      auto st = qmp_.Connect(Join(cfg_.work_dir, qemu::kQmpSock), Clock::now() + opt_.qmp_timeout);
      if (!st.ok()) return Status(st.code(), st.message() + Diagnostics());
    }
    auto r = qmp_.Execute(cmd, std::move(args), timeout, pass_fd);
    if (!r.ok() && r.status().code() != StatusCode::kFailedPrecondition) {
      return Status(r.status().code(), r.status().message() + Diagnostics());
    }
    return r;
  }

  Status StartLocked(const std::string& base_disk, const std::string& base_format,
                     const net::NetnsPlan* net_plan, const HostRules& rules) {
    if (Join(cfg_.work_dir, qemu::kQmpSock).size() > kMaxSunPath ||
        Join(cfg_.work_dir, qemu::kAgentSock).size() > kMaxSunPath) {
      return Status::InvalidArgument("work_dir " + cfg_.work_dir + " is too long for a Unix socket path");
    }
    // Leftovers from an earlier process in the same directory would confuse the socket wait.
    for (const char* name : {qemu::kQmpSock, qemu::kAgentSock}) ::unlink(Join(cfg_.work_dir, name).c_str());
    if (net_plan) {
      net_ = std::make_unique<net::NetnsNetwork>(*net_plan);
      if (auto st = net_->Create(); !st.ok()) {
        net_.reset();
        return st;
      }
      // On an error the caller's StopLocked() releases what was applied (rules first, then the namespace).
      if (auto st = ApplyRulesLocked(rules); !st.ok()) return st;
    }
    if (!base_disk.empty()) {
      if (FileExists(cfg_.disk))
        return Status::AlreadyExists("disk overlay " + cfg_.disk + " exists already");
      auto r = util::Run({opt_.qemu_img_binary, "create", "-q", "-f", "qcow2", "-F", base_format, "-b",
                          base_disk, cfg_.disk},
                         opt_.tool_timeout);
      if (!r.ok()) return r.status().WithContext("qemu-img create");
      owned_files_.push_back(cfg_.disk);
      if (r->exit_code != 0) {
        std::string out = r->output.substr(0, 400);
        while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
        auto code = util::MentionsNoSpace(out) ? StatusCode::kResourceExhausted : StatusCode::kUnavailable;
        return Status(code, "qemu-img create of " + cfg_.disk + " failed (exit " +
                                std::to_string(r->exit_code) + "): " + out);
      }
    }
    if (cfg_.memory_mode == QemuMemoryMode::kFile && cfg_.ram_share) owned_files_.push_back(cfg_.ram_path);
    owned_files_.push_back(Join(cfg_.work_dir, qemu::kQmpSock));
    owned_files_.push_back(Join(cfg_.work_dir, qemu::kAgentSock));

    util::SpawnOptions so;
    so.argv = qemu::BuildArgv(cfg_);
    so.stdout_path = Join(cfg_.work_dir, qemu::kQemuLog);
    so.cwd = cfg_.work_dir;
    so.die_with_parent = !outlive_owner_;
    if (net_) so.netns = net_->plan().netns;
    auto child = util::Spawn(so);
    if (!child.ok()) return child.status().WithContext("start QEMU");
    view_->pid.store(child->pid);
    if (on_started_) on_started_(child->pid);
    spdlog::debug("qemu: vm {} started pid {}", cfg_.name, child->pid);

    // Wait for QMP, watching the process.
    auto deadline = Clock::now() + opt_.startup_timeout;
    const std::string qmp_path = Join(cfg_.work_dir, qemu::kQmpSock);
    while (true) {
      if (!AliveLocked()) return Status::Unavailable("QEMU exited during startup" + Diagnostics());
      struct stat st {};
      if (::stat(qmp_path.c_str(), &st) == 0) {
        auto c = qmp_.Connect(qmp_path, Clock::now() + std::min<std::chrono::milliseconds>(
                                                           Left(deadline) + 1ms, opt_.qmp_timeout));
        if (c.ok()) break;
        if (!AliveLocked()) return Status::Unavailable("QEMU exited during startup" + Diagnostics());
        if (Clock::now() >= deadline) return Status(c.code(), c.message() + Diagnostics());
      }
      if (Clock::now() >= deadline) {
        return Status::DeadlineExceeded("QEMU did not open its QMP socket within " +
                                        std::to_string(opt_.startup_timeout.count()) + " ms" + Diagnostics());
      }
      std::this_thread::sleep_for(2ms);
    }
    if (cfg_.memory_mode == QemuMemoryMode::kFile) {
      json::object cap{{"capability", "x-ignore-shared"}, {"state", true}};
      auto r =
          Qmp("migrate-set-capabilities", json::object{{"capabilities", json::array{cap}}}, opt_.qmp_timeout);
      if (!r.ok()) return r.status();
    }
    return Status::Ok();
  }

  // Polls query-migrate until `completed`; fails on `failed`/`cancelled`, process death or the deadline.
  Status WaitMigration(Clock::time_point deadline, const char* what) {
    auto sleep = 1ms;
    while (true) {
      auto r = Qmp("query-migrate", nullptr, std::min(opt_.qmp_timeout, Left(deadline) + 100ms));
      if (!r.ok()) return r.status().WithContext(what);
      std::string status;
      std::string error;
      if (r->is_object()) {
        const auto& o = r->as_object();
        if (const auto* s = o.if_contains("status"); s && s->is_string()) status = s->as_string();
        if (const auto* e = o.if_contains("error-desc"); e && e->is_string()) error = e->as_string();
      }
      if (status == "completed") return Status::Ok();
      if (status == "failed" || status == "cancelled") {
        // QEMU reports a full file system under the migration's fd only as text ("Unable to write to file:
        // No space left on device").
        auto code = util::MentionsNoSpace(error) ? StatusCode::kResourceExhausted : StatusCode::kUnavailable;
        return Status(code, std::string(what) + ": migration " + status +
                                (error.empty() ? "" : ": " + error) + Diagnostics());
      }
      if (Clock::now() >= deadline) {
        return Status::DeadlineExceeded(std::string(what) + ": migration still '" + status +
                                        "' at the deadline" + Diagnostics());
      }
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, 10ms);
    }
  }

  // x-ignore-shared (mode file) was set in StartLocked, before the stream arrives.
  Status IncomingLocked(const std::string& dir) {
    auto deadline = Clock::now() + opt_.restore_timeout;
    const std::string state = Join(dir, qemu::kStateName);
    guest::UniqueFd fd(::open(state.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Status::FailedPrecondition("open " + state + ": " + std::strerror(errno));
    auto g = Qmp("getfd", json::object{{"fdname", "fcwarm-state"}}, opt_.qmp_timeout, fd.get());
    if (!g.ok()) return g.status().WithContext("restore");
    fd.Reset();
    auto m = Qmp("migrate-incoming", json::object{{"uri", "fd:fcwarm-state"}}, opt_.qmp_timeout);
    if (!m.ok()) return m.status().WithContext("restore");
    if (auto st = WaitMigration(deadline, "restore"); !st.ok()) return st;
    auto c = Qmp("cont", nullptr, std::min(opt_.qmp_timeout, Left(deadline) + 100ms));
    if (!c.ok()) return c.status().WithContext("restore: cont");
    return Status::Ok();
  }

  Status SnapshotLocked(const std::string& dir) {
    auto deadline = Clock::now() + opt_.snapshot_timeout;
    if (!AliveLocked()) return Status::Unavailable("QEMU is not running" + Diagnostics());
    if (cfg_.memory_mode == QemuMemoryMode::kFile && !cfg_.ram_share) {
      // Its RAM is a private mapping of another snapshot's file: neither that file nor a stream restores into
      // the same device model. Snapshots are taken of cold-booted VMs.
      return Status::FailedPrecondition("a clone restored in memory mode 'file' cannot be snapshotted");
    }
    auto status = Qmp("query-status", nullptr, opt_.qmp_timeout);
    if (!status.ok()) return status.status();
    bool running = false;
    if (status->is_object()) {
      const auto* r = status->as_object().if_contains("running");
      running = r && r->is_bool() && r->as_bool();
    }
    if (running) {
      if (auto r = Qmp("stop", nullptr, opt_.qmp_timeout); !r.ok()) return r.status();
    }
    // Unthrottled: the default bandwidth cap (32 MiB/s) would make a full-RAM stream take seconds.
    auto p =
        Qmp("migrate-set-parameters", json::object{{"max-bandwidth", int64_t{1} << 40}}, opt_.qmp_timeout);
    if (!p.ok()) return p.status();
    const std::string state = Join(dir, qemu::kStateName);
    {
      guest::UniqueFd fd(::open(state.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
      if (!fd.valid()) return util::ErrnoStatus(errno, "write device state: create " + state);
      auto g = Qmp("getfd", json::object{{"fdname", "fcwarm-snap"}}, opt_.qmp_timeout, fd.get());
      if (!g.ok()) return g.status();
    }
    auto m = Qmp("migrate", json::object{{"uri", "fd:fcwarm-snap"}}, opt_.qmp_timeout);
    if (!m.ok()) return m.status();
    if (auto st = WaitMigration(deadline, "migrate"); !st.ok()) {
      if (AliveLocked()) (void)Qmp("migrate_cancel", nullptr, opt_.qmp_timeout);
      return st.WithContext("write device state");
    }
    if (auto st = FsyncFile(state); !st.ok()) return st.WithContext("write device state");

    Sidecar sc;
    sc.qemu_version = qemu_version_;
    sc.accel = cfg_.accel;
    sc.cpu_model = cfg_.cpu_model;
    sc.vcpus = cfg_.vcpus;
    sc.memory_mib = cfg_.memory_mib;
    sc.memory_mode = cfg_.memory_mode;
    sc.kernel = cfg_.kernel;
    sc.initrd = cfg_.initrd;
    sc.append = cfg_.append;
    sc.disk = !cfg_.disk.empty();
    sc.nic = cfg_.nic;
    sc.mac = cfg_.mac;
    struct stat st {};
    if (::stat(state.c_str(), &st) != 0)
      return Status::Unavailable("stat " + state + ": " + std::strerror(errno));
    sc.state_size = static_cast<uint64_t>(st.st_size);
    auto digest = util::Xxh3File(state);
    if (!digest.ok()) return digest.status();
    sc.state_xxh3 = *digest;
    if (cfg_.memory_mode == QemuMemoryMode::kFile) {
      // The build VM keeps its own RAM file (it may be resumed); the snapshot gets a copy no one ever writes.
      if (auto s = CopySparse(cfg_.ram_path, Join(dir, qemu::kRamName)); !s.ok()) {
        return s.WithContext("write memory");
      }
      struct stat rs {};
      if (::stat(Join(dir, qemu::kRamName).c_str(), &rs) == 0)
        sc.ram_size = static_cast<uint64_t>(rs.st_size);
    }
    FCWARM_FAILPOINT("snapshot.build.write_memory");  // device state and RAM written (either memory mode)
    if (!cfg_.disk.empty()) {
      // The device is inactive (flushed) after the migration completed; its backing file stays the image
      // base.
      if (auto s = CopySparse(cfg_.disk, Join(dir, qemu::kDiskName)); !s.ok()) {
        return s.WithContext("write disk");
      }
    }
    FCWARM_FAILPOINT("snapshot.build.write_disk");  // the disk copied, no sidecar yet
    if (Clock::now() > deadline) return Status::DeadlineExceeded("snapshot took longer than the deadline");
    return util::WriteFileDurable(Join(dir, qemu::kSidecarName), sc.ToJson());
  }

  Status StopLocked(std::chrono::milliseconds grace) {
    if (stopped_) return Status::Ok();
    int p = view_->pid.load();
    if (p > 0 && AliveLocked()) {
      if (grace.count() > 0 && qmp_.connected()) {
        (void)qmp_.Execute("quit", nullptr, std::min(grace, opt_.qmp_timeout));
        if (foreign_) {
          if (foreign_->WaitExit(grace)) exit_status_ = 0;
        } else if (auto s = util::WaitFor(p, grace)) {
          exit_status_ = *s;
        }
      }
      if (!exit_status_ && foreign_) {
        (void)foreign_->Signal(SIGKILL);
        if (foreign_->WaitExit(10s)) exit_status_ = 0;
      } else if (!exit_status_) {
        ::kill(p, SIGKILL);
        if (auto s = util::WaitFor(p, 10s)) exit_status_ = *s;
      }
    }
    qmp_.Close();
    stopped_ = true;
    view_->exited.store(true);
    Status result;
    if (p > 0 && !exit_status_)
      result = Status::Internal("QEMU pid " + std::to_string(p) + " could not be reaped");
    view_->pid.store(-1);
    for (auto* rules : {&ports_, &egress_}) {
      if (!*rules) continue;
      if (auto st = (*rules)->Release(); !st.ok() && result.ok()) result = st;
      rules->reset();
    }
    if (net_) {
      if (auto st = net_->Release(); !st.ok() && result.ok()) result = st;
      net_.reset();
    }
    for (const auto& f : owned_files_) {
      if (::unlink(f.c_str()) != 0 && errno != ENOENT && result.ok()) {
        result = Status::Unavailable("remove " + f + ": " + std::strerror(errno));
      }
    }
    owned_files_.clear();
    foreign_.reset();
    return result;
  }

  // The VM's egress rules, then its published ports (each replaces that VM's rules of its kind).
  Status ApplyRulesLocked(const HostRules& rules) {
    if (rules.egress) {
      auto handle = net::ApplyEgress(*rules.egress);
      if (!handle.ok()) return handle.status().WithContext("egress of vm " + rules.egress->vm_id);
      egress_ = std::move(handle).value();
    }
    if (rules.ports) {
      auto handle = net::PublishPorts(*rules.ports);
      if (!handle.ok()) return handle.status().WithContext("published ports of vm " + rules.ports->vm_id);
      ports_ = std::move(handle).value();
    }
    return Status::Ok();
  }

  // Lets go of the process and every host resource without stopping or deleting anything.
  void DetachLocked() {
    qmp_.Close();
    for (auto* rules : {&ports_, &egress_}) {
      if (*rules) (*rules)->Forget();
      rules->reset();
    }
    if (net_) net_->Forget();
    net_.reset();
    owned_files_.clear();
    foreign_.reset();
    stopped_ = true;
    view_->exited.store(true);
    view_->pid.store(-1);
  }

  Status AdoptLocked(const net::NetnsPlan* net_plan, const HostRules& rules, const AdoptTarget& target) {
    auto proc = util::ForeignProcess::Open(target.pid, target.start_time);
    if (!proc.ok()) return proc.status();
    // The process must be this VM's QEMU: its control socket is in this VM's work directory.
    const std::string qmp_path = Join(cfg_.work_dir, qemu::kQmpSock);
    auto args = util::ProcessArgs(target.pid);
    bool ours = false;
    for (const auto& a : args.value_or(std::vector<std::string>{})) {
      ours = ours || a.find("path=" + qmp_path + ",") != std::string::npos;
    }
    if (!ours) {
      return Status::FailedPrecondition("process " + std::to_string(target.pid) + " is not the QEMU of vm " +
                                        cfg_.name + " (its arguments do not name " + qmp_path + ")");
    }
    foreign_ = std::move(proc).value();
    view_->pid.store(target.pid);
    if (auto c = qmp_.Connect(qmp_path, Clock::now() + opt_.qmp_timeout); !c.ok()) {
      return Status::FailedPrecondition("QMP of vm " + cfg_.name + ": " + c.message());
    }
    auto status = Qmp("query-status", nullptr, opt_.qmp_timeout);
    if (!status.ok()) return Status::FailedPrecondition("query-status of vm " + cfg_.name + ": " + status.status().message());
    const json::value* run = status->is_object() ? status->as_object().if_contains("status") : nullptr;
    std::string state = run && run->is_string() ? std::string(run->as_string()) : "";
    if (state != "running") {
      return Status::FailedPrecondition("vm " + cfg_.name + " is '" + state + "', not running");
    }
    if (net_plan) {
      net_ = std::make_unique<net::NetnsNetwork>(*net_plan);
      if (auto st = net_->Adopt(); !st.ok()) return st.WithContext("network of vm " + cfg_.name);
      // Applying again replaces the VM's rules in one transaction: whatever a restart or an operator removed
      // is back, and nothing is doubled.
      if (auto st = ApplyRulesLocked(rules); !st.ok()) return st;
    }
    // Files to remove when it stops: everything it may have in its own directory.
    for (const char* name : {qemu::kDiskName, qemu::kRamName, qemu::kQmpSock, qemu::kAgentSock}) {
      owned_files_.push_back(Join(cfg_.work_dir, name));
    }
    return Status::Ok();
  }

  std::string qemu_version_;
  QemuOptions opt_;
  VmConfig cfg_;
  std::function<void(int)> on_started_;
  bool outlive_owner_ = false;               // spawned without PR_SET_PDEATHSIG (LaunchSpec::outlive_owner)
  std::optional<util::ForeignProcess> foreign_;  // set for an adopted VM: its QEMU is not our child
  std::mutex mu_;
  std::shared_ptr<ProcessView> view_;
  std::optional<int> exit_status_;
  qemu::QmpClient qmp_;
  std::unique_ptr<net::NetnsNetwork> net_;
  std::unique_ptr<net::RuleHandle> egress_;  // the VM's egress rules (docs/networking.md), released before net_
  std::unique_ptr<net::RuleHandle> ports_;   // its published ports, released before egress_

  std::unique_ptr<GuestChannel> guest_;
  std::vector<std::string> owned_files_;
  bool stopped_ = false;
};

// ---------------------------------------------------------------------------------------------------------------

class QemuVmm final : public Vmm, public HostLeftovers {
 public:
  explicit QemuVmm(QemuOptions o) : opt_(std::move(o)) {}

  std::string Kind() const override { return "qemu"; }

  // Facts about QEMU only, under vmm.*; the host's part of the key is the core's (core/host_facts.cpp).
  // FirecrackerVmm's looks alike because both implement the same Vmm contract.
  Result<std::map<std::string, std::string>> HostCompatibility() override {
    auto v = Version();
    if (!v.ok()) return v.status();
    return std::map<std::string, std::string>{
        {"vmm.version", *v},
        {"vmm.snapshot_version", "fcwarm-qemu-" + std::to_string(qemu::kSidecarFormat)},
        {"vmm.machine", "microvm"},
        {"vmm.accel", ResolveAccel(opt_.accelerator)},
        {"vmm.cpu_model", opt_.cpu_model},
    };
  }

  Result<std::unique_ptr<Vm>> ColdBoot(const LaunchSpec& spec) override {
    if (auto st = CheckSpec(spec); !st.ok()) return st;
    auto version = Version();
    if (!version.ok()) return version.status();
    VmConfig cfg = BaseConfig(spec);
    cfg.accel = ResolveAccel(opt_.accelerator);
    cfg.cpu_model = !opt_.cpu_model.empty() ? opt_.cpu_model : (cfg.accel == "kvm" ? "host" : "");
    cfg.vcpus = spec.image.shape.vcpus;
    cfg.memory_mib = spec.image.shape.memory_mib;
    cfg.memory_mode = opt_.memory_mode;
    cfg.ram_path = Join(spec.work_dir, qemu::kRamName);
    cfg.ram_share = true;
    cfg.kernel = spec.image.kernel_path;
    cfg.initrd = spec.image.initrd_path;
    cfg.append = opt_.kernel_boot_args;
    if (cfg.accel == "tcg" && !opt_.tcg_kernel_args.empty()) cfg.append += " " + opt_.tcg_kernel_args;
    if (!spec.image.boot_args.empty()) cfg.append += " " + spec.image.boot_args;
    if (!spec.image.rootfs_path.empty()) cfg.disk = Join(spec.work_dir, qemu::kDiskName);
    cfg.nic = opt_.network_mode == QemuNetworkMode::kNetns;
    cfg.mac = MacFor(spec);
    std::string base_format = spec.image.rootfs_path.empty() ? "" : ImageFormat(spec.image.rootfs_path);
    auto vm = StartVm(spec, cfg, *version, spec.image.rootfs_path, base_format);
    if (!vm.ok()) return vm.status().WithContext("cold boot of vm " + spec.vm_id);
    return std::unique_ptr<Vm>(std::move(*vm));
  }

  Result<std::unique_ptr<Vm>> Restore(const LaunchSpec& spec, const std::string& snapshot_dir) override {
    auto st = RestoreImpl(spec, snapshot_dir);
    if (!st.ok()) return st.status().WithContext("restore of vm " + spec.vm_id + " from " + snapshot_dir);
    return st;
  }

 private:
  Result<std::unique_ptr<Vm>> RestoreImpl(const LaunchSpec& spec, const std::string& dir) {
    if (auto st = CheckSpec(spec); !st.ok()) return st;
    auto version = Version();
    if (!version.ok()) return version.status();
    auto text = util::ReadFile(Join(dir, qemu::kSidecarName), 1 << 20);
    if (!text.ok()) {
      return Status::FailedPrecondition("snapshot has no readable " + std::string(qemu::kSidecarName) +
                                        " (not written by the QEMU backend?): " + text.status().message());
    }
    auto sc = Sidecar::Parse(*text, Join(dir, qemu::kSidecarName));
    if (!sc.ok()) return sc.status();
    if (!sc->qemu_version.empty() && sc->qemu_version != *version) {
      return Status::FailedPrecondition("snapshot was written by QEMU " + sc->qemu_version +
                                        ", this host runs " + *version);
    }
    if (sc->vcpus != spec.image.shape.vcpus || sc->memory_mib != spec.image.shape.memory_mib) {
      return Status::FailedPrecondition("VM shape differs from the snapshot's (" + std::to_string(sc->vcpus) +
                                        " vCPU, " + std::to_string(sc->memory_mib) + " MiB)");
    }
    const std::string state = Join(dir, qemu::kStateName);
    struct stat st {};
    if (::stat(state.c_str(), &st) != 0) return Status::FailedPrecondition("missing " + state);
    if (static_cast<uint64_t>(st.st_size) != sc->state_size) {
      return Status::FailedPrecondition(state + " has " + std::to_string(st.st_size) + " bytes, expected " +
                                        std::to_string(sc->state_size));
    }
    if (opt_.verify_state_digest && !sc->state_xxh3.empty()) {
      auto d = util::Xxh3File(state);
      if (!d.ok()) return d.status();
      if (*d != sc->state_xxh3) {
        return Status::FailedPrecondition(state + " is corrupt (digest " + *d + ", expected " +
                                          sc->state_xxh3 + ")");
      }
    }
    if (sc->memory_mode == QemuMemoryMode::kFile) {
      const std::string ram = Join(dir, qemu::kRamName);
      struct stat rs {};
      if (::stat(ram.c_str(), &rs) != 0) return Status::FailedPrecondition("missing " + ram);
      if (static_cast<uint64_t>(rs.st_size) != uint64_t{sc->memory_mib} << 20) {
        return Status::FailedPrecondition(ram + " has " + std::to_string(rs.st_size) + " bytes, expected " +
                                          std::to_string(uint64_t{sc->memory_mib} << 20));
      }
    }
    if (sc->disk && !FileExists(Join(dir, qemu::kDiskName))) {
      return Status::FailedPrecondition("missing " + Join(dir, qemu::kDiskName));
    }
    // The runtime image's own files (the compatibility key holds their digests, so they are the snapshot's
    // content even where their paths differ: a generation fetched from another node), else the recorded ones.
    const std::string kernel = spec.image.kernel_path.empty() ? sc->kernel : spec.image.kernel_path;
    const std::string initrd =
        sc->initrd.empty() ? "" : (spec.image.initrd_path.empty() ? sc->initrd : spec.image.initrd_path);
    if (!FileExists(kernel)) return Status::FailedPrecondition("the snapshot's kernel " + kernel + " is gone");
    if (!initrd.empty() && !FileExists(initrd)) {
      return Status::FailedPrecondition("the snapshot's initrd " + initrd + " is gone");
    }

    VmConfig cfg = BaseConfig(spec);
    cfg.accel = sc->accel;
    cfg.cpu_model = sc->cpu_model;
    cfg.vcpus = sc->vcpus;
    cfg.memory_mib = sc->memory_mib;
    cfg.memory_mode = sc->memory_mode;
    cfg.ram_path = Join(dir, qemu::kRamName);
    cfg.ram_share = false;  // private copy-on-write mapping: the snapshot's RAM file is never written
    cfg.kernel = kernel;
    cfg.initrd = initrd;
    cfg.append = sc->append;
    if (sc->disk) cfg.disk = Join(spec.work_dir, qemu::kDiskName);
    cfg.nic = sc->nic;
    cfg.mac = spec.network.mac.empty() ? sc->mac : spec.network.mac;
    cfg.incoming = true;
    auto vm = StartVm(spec, cfg, *version, sc->disk ? Join(dir, qemu::kDiskName) : "", "qcow2");
    if (!vm.ok()) return vm.status();
    if (auto s = (*vm)->Incoming(dir); !s.ok()) return s;
    return std::unique_ptr<Vm>(std::move(*vm));
  }

  // Starts the QEMU process of a cold boot or a restore: the VM's network namespace when `cfg` has a NIC, then
  // the process with an overlay on `base_disk` (of `base_format`; "" for no disk).
  Result<std::unique_ptr<QemuVm>> StartVm(const LaunchSpec& spec, const VmConfig& cfg, const std::string& version,
                                          const std::string& base_disk, const std::string& base_format) {
    std::optional<net::NetnsPlan> plan;
    auto rules = NetworkOf(spec, cfg.nic, &plan);
    if (!rules.ok()) return rules.status();
    auto vm = std::make_unique<QemuVm>(opt_, cfg, version, spec.on_process_started, spec.outlive_owner);
    if (auto st = vm->Start(base_disk, base_format, plan ? &*plan : nullptr, *rules); !st.ok()) return st;
    return vm;
  }

  // The VM's namespace plan (when it has a NIC) and its host rules: egress rules and published ports go on the
  // host end of the VM's veth; a VM without a link (a build VM) has neither.
  Result<HostRules> NetworkOf(const LaunchSpec& spec, bool nic, std::optional<net::NetnsPlan>* plan) {
    if (nic) {
      auto p = NetPlan(spec);
      if (!p.ok()) return p.status();
      *plan = *p;
    }
    return PlanHostRules(spec.network, spec.vm_id, *plan ? (*plan)->host_veth : "",
                         "no veth to the root namespace: a VM without a network identity, or --qemu-network none");
  }

 public:
  Result<std::unique_ptr<Vm>> Adopt(const LaunchSpec& spec, const AdoptTarget& target) override {
    if (spec.vm_id.empty()) return Status::InvalidArgument("vm_id is empty");
    auto version = Version();
    if (!version.ok()) return version.status();
    VmConfig cfg = BaseConfig(spec);
    std::optional<net::NetnsPlan> plan;
    auto rules = NetworkOf(spec, opt_.network_mode == QemuNetworkMode::kNetns, &plan);
    if (!rules.ok()) return rules.status();
    auto vm = std::make_unique<QemuVm>(opt_, cfg, *version, nullptr, true);
    if (auto st = vm->Adopt(plan ? &*plan : nullptr, *rules, target); !st.ok()) {
      return st.WithContext("adopt of vm " + spec.vm_id);
    }
    return std::unique_ptr<Vm>(std::move(vm));
  }

 private:

  Status CheckSpec(const LaunchSpec& spec) {
    if (spec.vm_id.empty()) return Status::InvalidArgument("vm_id is empty");
    struct stat st {};
    if (spec.work_dir.empty() || ::stat(spec.work_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument("work_dir '" + spec.work_dir + "' is not an existing directory");
    }
    if (!FileExists(spec.image.kernel_path)) {
      return Status::InvalidArgument("kernel '" + spec.image.kernel_path + "' does not exist");
    }
    if (!spec.image.initrd_path.empty() && !FileExists(spec.image.initrd_path)) {
      return Status::InvalidArgument("initrd '" + spec.image.initrd_path + "' does not exist");
    }
    if (!spec.image.rootfs_path.empty() && !FileExists(spec.image.rootfs_path)) {
      return Status::InvalidArgument("rootfs '" + spec.image.rootfs_path + "' does not exist");
    }
    if (spec.image.shape.vcpus < 1 || spec.image.shape.vcpus > 64 || spec.image.shape.memory_mib < 64) {
      return Status::InvalidArgument("VM shape out of range");
    }
    if (!spec.network.mac.empty()) {
      static const std::string hex = "0123456789abcdefABCDEF";
      const auto& m = spec.network.mac;
      bool ok = m.size() == 17;
      for (size_t i = 0; ok && i < m.size(); ++i)
        ok = (i % 3 == 2) ? m[i] == ':' : hex.find(m[i]) != std::string::npos;
      if (!ok) return Status::InvalidArgument("network.mac '" + m + "' is not a MAC address");
    }
    return Status::Ok();
  }

  VmConfig BaseConfig(const LaunchSpec& spec) {
    VmConfig cfg;
    cfg.qemu_binary = opt_.qemu_binary;
    cfg.work_dir = fs::absolute(spec.work_dir).lexically_normal().string();
    while (cfg.work_dir.size() > 1 && cfg.work_dir.back() == '/') cfg.work_dir.pop_back();
    std::string name;
    for (char c : spec.vm_id) {
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') name.push_back(c);
    }
    cfg.name = "fcwarm-" + name.substr(0, 36);
    return cfg;
  }

  std::string MacFor(const LaunchSpec& spec) {
    if (!spec.network.mac.empty()) return spec.network.mac;
    std::string d = util::Xxh3Hex(spec.vm_id);
    return "02:fc:" + d.substr(0, 2) + ":" + d.substr(2, 2) + ":" + d.substr(4, 2) + ":" + d.substr(6, 2);
  }

  // A crashed run's VM: its namespace and host veth are named from its id (NamesForVm); the rest of its
  // devices live in the namespace.
  Result<int> RemoveVmLeftovers(const std::string& vm_id, int64_t /*index*/) override {
    net::NetnsPlan plan;
    if (auto st = net::NamesForVm(vm_id, opt_.netns_prefix, opt_.veth_prefix, &plan); !st.ok()) return st;
    int removed = 0;
    auto veth = net::DeleteInterfaceIfPresent(opt_.ip_binary, plan.host_veth, opt_.tool_timeout);
    if (!veth.ok()) return veth.status();
    removed += *veth ? 1 : 0;
    auto ns = net::DeleteNetnsIfPresent(opt_.ip_binary, plan.netns, opt_.tool_timeout);
    if (!ns.ok()) return ns.status();
    return removed + (*ns ? 1 : 0);
  }

  Result<net::NetnsPlan> NetPlan(const LaunchSpec& spec) {
    net::NetnsPlan plan;
    plan.ip_binary = opt_.ip_binary;
    plan.timeout = opt_.tool_timeout;
    plan.tap = qemu::kTapName;
    if (auto st = net::NamesForVm(spec.vm_id, opt_.netns_prefix, opt_.veth_prefix, &plan); !st.ok())
      return st;
    if (spec.network.index >= 0) {
      auto gw = net::GatewayCidr(spec.network.gateway, spec.network.ip_cidr);
      if (!gw.ok()) return gw.status();
      plan.gateway_cidr = *gw;
    }
    // A VM without an identity (a build VM) is not linked to the host.
    if (plan.gateway_cidr.empty()) plan.host_veth.clear();
    return plan;
  }

  Result<std::string> Version() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!version_.empty()) return version_;
    auto v = QemuVersion(opt_);
    if (!v.ok()) return v.status();
    version_ = *v;
    return version_;
  }

  QemuOptions opt_;
  std::mutex mu_;
  std::string version_;
};

}  // namespace

Status ProbeQemu(const QemuOptions& options) {
  auto v = QemuVersion(options);
  if (!v.ok()) return v.status();
  auto img = util::FindProgram(options.qemu_img_binary, true);
  if (!img) return Status::NotFound("qemu-img binary '" + options.qemu_img_binary + "' not found");
  auto r = util::Run({*img, "--version"}, options.tool_timeout);
  if (!r.ok()) return r.status().WithContext(options.qemu_img_binary + " --version");
  if (r->exit_code != 0) return Status::Unavailable(options.qemu_img_binary + " --version failed");
  auto bin = util::FindProgram(options.qemu_binary, true);
  auto m = util::Run({*bin, "-machine", "help"}, options.tool_timeout);
  if (!m.ok()) return m.status().WithContext(options.qemu_binary + " -machine help");
  if (m->output.find("microvm") == std::string::npos) {
    return Status::Unavailable(options.qemu_binary + " does not support the microvm machine");
  }
  if (options.accelerator != "tcg" && options.accelerator != "kvm" && options.accelerator != "auto") {
    return Status::InvalidArgument("accelerator must be tcg, kvm or auto, not '" + options.accelerator + "'");
  }
  if (options.accelerator == "kvm") {
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) return Status::Unavailable(std::string("/dev/kvm: ") + std::strerror(errno));
    ::close(fd);
  }
  return Status::Ok();
}

std::unique_ptr<Vmm> MakeQemuVmm(QemuOptions options) {
  return std::make_unique<QemuVmm>(std::move(options));
}

}  // namespace fcwarm
