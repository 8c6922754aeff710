// A fake `jailer` for tests: validates the arguments the backend passes, builds the jail the way the real
// jailer does (<chroot-base>/<exec file name>/<id>/root, the exec file copied in), joins the network
// namespace, chroots, drops to uid/gid and execs the (static) fake firecracker with `--id <id>` plus the
// arguments after
// `--`. cgroups are only validated, not created. Used only by tests.
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int Fail(const std::string& msg) {
  std::cerr << "fake jailer: " << msg << "\n";
  return 1;
}

int main(int argc, char** argv) {
  std::string id, exec_file, base, netns;
  long uid = -1, gid = -1;
  std::vector<std::string> fc_args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--") {
      for (++i; i < argc; ++i) fc_args.push_back(argv[i]);
      break;
    } else if (a == "--id") {
      id = next();
    } else if (a == "--exec-file") {
      exec_file = next();
    } else if (a == "--uid") {
      uid = std::stol(next());
    } else if (a == "--gid") {
      gid = std::stol(next());
    } else if (a == "--chroot-base-dir") {
      base = next();
    } else if (a == "--netns") {
      netns = next();
    } else if (a == "--cgroup-version") {
      std::string v = next();
      if (v != "1" && v != "2") return Fail("bad --cgroup-version " + v);
    } else if (a == "--parent-cgroup") {
      next();
    } else if (a == "--cgroup") {
      if (next().find('=') == std::string::npos) return Fail("--cgroup needs file=value");
    } else {
      return Fail("unexpected argument " + a);
    }
  }
  if (id.empty() || id.size() > 64) return Fail("--id must have 1-64 characters");
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-')
      return Fail("--id has an invalid character");
  }
  if (exec_file.empty() || exec_file[0] != '/' || !fs::is_regular_file(exec_file)) {
    return Fail("--exec-file must be an absolute path to a file");
  }
  if (uid < 0 || gid < 0 || base.empty()) return Fail("--uid, --gid and --chroot-base-dir are required");
  fs::path root = fs::path(base) / fs::path(exec_file).filename() / id / "root";
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return Fail("cannot create " + root.string());
  fs::path exec_in = root / fs::path(exec_file).filename();
  fs::copy_file(exec_file, exec_in, fs::copy_options::overwrite_existing, ec);
  if (ec) return Fail("cannot copy the exec file: " + ec.message());
  if (!netns.empty()) {
    int fd = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) return Fail("cannot join " + netns);
    ::close(fd);
  }
  if (::chroot(root.c_str()) != 0 || ::chdir("/") != 0)
    return Fail(std::string("chroot: ") + std::strerror(errno));
  if (::setgroups(0, nullptr) != 0 || ::setgid(static_cast<gid_t>(gid)) != 0 ||
      ::setuid(static_cast<uid_t>(uid)) != 0) {
    return Fail(std::string("cannot drop privileges: ") + std::strerror(errno));
  }
  std::string exec_name = "/" + fs::path(exec_file).filename().string();
  std::vector<std::string> args{exec_name, "--id", id};
  args.insert(args.end(), fc_args.begin(), fc_args.end());
  std::vector<char*> cargv;
  for (auto& s : args) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  ::execv(exec_name.c_str(), cargv.data());
  return Fail(std::string("exec: ") + std::strerror(errno));
}
