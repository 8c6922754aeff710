// fcwarm-agent: transports for the guest agent (virtio-serial port and AF_VSOCK listener).
//
// usage: fcwarm-agent [--serial-name NAME] [--no-serial] [--vsock-port N] [--no-vsock] [--stdio] [--version]
#include <dirent.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "agent_core.hpp"

namespace fa = fcwarm::agent;

namespace {

void Log(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "fcwarm-agent: %s\n", buf);
}

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

std::string ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

enum class WriteResult { kOk, kPeerGone, kError };

// Writes all of `data` to a (possibly non-blocking) fd. Gives up when the peer hangs up.
WriteResult WriteAll(int fd, const std::string& data, bool serial) {
  std::size_t off = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (off < data.size()) {
    ssize_t w = serial ? write(fd, data.data() + off, data.size() - off)
                       : send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += static_cast<std::size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      if (std::chrono::steady_clock::now() > deadline) return WriteResult::kError;
      pollfd p{fd, POLLOUT, 0};
      int r = poll(&p, 1, 1000);
      // A virtio-serial port reports POLLHUP while the host side is not connected.
      if (r > 0 && (p.revents & POLLHUP) && !(p.revents & POLLOUT)) return WriteResult::kPeerGone;
      continue;
    }
    return (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) ? WriteResult::kPeerGone
                                                                        : WriteResult::kError;
  }
  return WriteResult::kOk;
}

// Turns received bytes into replies; returns false if the peer went away while writing.
bool Process(fa::LineAssembler& la, std::string_view bytes, fa::AgentContext& ctx, int out_fd, bool serial) {
  for (auto& ev : la.Feed(bytes)) {
    std::string reply;
    if (ev.too_large) {
      reply = fa::TooLargeReply();
    } else {
      if (ev.line.find_first_not_of(" \t") == std::string::npos) continue;  // blank line: not a request
      reply = fa::HandleRequestLine(ev.line, ctx);
    }
    reply.push_back('\n');
    auto r = WriteAll(out_fd, reply, serial);
    if (r != WriteResult::kOk) {
      Log("reply dropped (%s)", r == WriteResult::kPeerGone ? "host disconnected" : strerror(errno));
      return false;
    }
  }
  return true;
}

// ---- virtio-serial ----

// Finds /dev/vportNpM for the port whose sysfs name is `name`; creates the node if devtmpfs lacks it.
std::string FindSerialPort(const std::string& name) {
  const char* base = "/sys/class/virtio-ports";
  DIR* d = opendir(base);
  if (!d) return "";
  std::string found;
  while (dirent* e = readdir(d)) {
    std::string port = e->d_name;
    if (port.rfind("vport", 0) != 0) continue;
    if (ReadSmallFile(std::string(base) + "/" + port + "/name") != name) continue;
    std::string dev = "/dev/" + port;
    struct stat st;
    if (stat(dev.c_str(), &st) != 0) {
      unsigned maj = 0, min = 0;
      if (sscanf(ReadSmallFile(std::string(base) + "/" + port + "/dev").c_str(), "%u:%u", &maj, &min) == 2)
        mknod(dev.c_str(), S_IFCHR | 0600, makedev(maj, min));
    }
    found = dev;
    break;
  }
  closedir(d);
  return found;
}

// Waits until SIGIO is pending (or the timeout passes) and consumes it.
void WaitForSigio(int timeout_ms) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGIO);
  timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  siginfo_t info;
  (void)sigtimedwait(&set, &info, &ts);
}

[[noreturn]] void SerialLoop(std::string name, fa::AgentContext* ctx) {
  bool said_missing = false;
  for (;;) {
    std::string dev = FindSerialPort(name);
    if (dev.empty()) {
      if (!said_missing) Log("virtio-serial port %s not found yet; retrying every second", name.c_str());
      said_missing = true;
      SleepMs(1000);
      continue;
    }
    int fd = open(dev.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      Log("open %s: %s; retrying", dev.c_str(), strerror(errno));
      SleepMs(1000);
      continue;
    }
    // The port raises SIGIO (blocked in every thread, collected with sigtimedwait) when data arrives and when
    // the host side connects, so a disconnected port costs one wakeup a second instead of a polling loop.
    f_owner_ex owner{F_OWNER_TID, static_cast<pid_t>(gettid())};
    bool sigio = fcntl(fd, F_SETOWN_EX, &owner) == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) == 0;
    Log("serving %s on %s%s", name.c_str(), dev.c_str(), sigio ? "" : " (no SIGIO)");
    fa::LineAssembler la;
    bool host_connected = true;
    char buf[65536];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        Log("poll %s: %s", dev.c_str(), strerror(errno));
        break;
      }
      ssize_t n = -1;
      int read_errno = 0;
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        n = read(fd, buf, sizeof buf);
        read_errno = errno;
      }
      if (n > 0) {
        if (!host_connected) Log("host connected to %s", dev.c_str());
        host_connected = true;
        if (!Process(la, std::string_view(buf, static_cast<std::size_t>(n)), *ctx, fd, true)) la.Reset();
        continue;
      }
      if (n < 0 && (read_errno == EINTR || (read_errno == EAGAIN && !(p.revents & POLLHUP)))) continue;
      if (n == 0 || (n < 0 && read_errno == EAGAIN)) {
        // Host side not connected: read() returns 0 and poll() reports POLLIN|POLLHUP at once, for as long as
        // nobody is connected. Wait a little before looking again instead of spinning.
        if (host_connected) Log("host disconnected from %s (read returned %zd); waiting", dev.c_str(), n);
        host_connected = false;
        la.Reset();
        if (sigio) {
          WaitForSigio(1000);
        } else {
          SleepMs(20);
        }
        continue;
      }
      Log("read %s: %s; reopening", dev.c_str(), strerror(read_errno));
      break;
    }
    close(fd);
    SleepMs(500);
  }
}

// ---- vsock ----

void ServeStream(int fd, fa::AgentContext* ctx) {
  fa::LineAssembler la;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (!Process(la, std::string_view(buf, static_cast<std::size_t>(n)), *ctx, fd, false)) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  close(fd);
}

unsigned VsockPortFromCmdline(unsigned def) {
  std::string cmdline = ReadSmallFile("/proc/cmdline");
  std::istringstream ss(cmdline);
  std::string tok;
  const std::string key = "fcwarm.agent_vsock_port=";
  while (ss >> tok) {
    if (tok.rfind(key, 0) == 0) {
      char* end = nullptr;
      unsigned long v = strtoul(tok.c_str() + key.size(), &end, 10);
      if (end && *end == '\0' && v > 0 && v < 0xffffffffUL) def = static_cast<unsigned>(v);
    }
  }
  return def;
}

[[noreturn]] void VsockLoop(unsigned port, fa::AgentContext* ctx) {
  int delay_ms = 1000;
  for (;;) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
      if (delay_ms == 1000) Log("vsock unavailable (%s); retrying", strerror(errno));
      SleepMs(delay_ms);
      delay_ms = std::min(delay_ms * 2, 10000);
      continue;
    }
    sockaddr_vm addr{};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = port;
    if (bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(s, 8) != 0) {
      if (delay_ms == 1000) Log("vsock bind/listen port %u: %s; retrying", port, strerror(errno));
      close(s);
      SleepMs(delay_ms);
      delay_ms = std::min(delay_ms * 2, 10000);
      continue;
    }
    Log("listening on vsock port %u", port);
    delay_ms = 1000;
    for (;;) {
      int c = accept4(s, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        Log("vsock accept: %s", strerror(errno));
        SleepMs(200);
        continue;
      }
      std::thread(ServeStream, c, ctx).detach();
    }
  }
}

int StdioLoop(fa::AgentContext* ctx) {
  fa::LineAssembler la;
  char buf[65536];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n > 0) {
      if (!Process(la, std::string_view(buf, static_cast<std::size_t>(n)), *ctx, 1, true)) return 1;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return 0;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string serial_name = "org.fcwarm.agent.0";
  bool serial = true, vsock = true, stdio = false;
  unsigned vsock_port = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--serial-name" && i + 1 < argc)
      serial_name = argv[++i];
    else if (a == "--no-serial")
      serial = false;
    else if (a == "--vsock-port" && i + 1 < argc)
      vsock_port = static_cast<unsigned>(strtoul(argv[++i], nullptr, 10));
    else if (a == "--no-vsock")
      vsock = false;
    else if (a == "--stdio")
      stdio = true;
    else if (a == "--version") {
      printf("fcwarm-agent %s (protocol %d)\n", std::string(fa::kAgentVersion).c_str(), fa::kProtocolVersion);
      return 0;
    } else {
      fprintf(
          stderr,
          "usage: fcwarm-agent [--serial-name NAME] [--no-serial] [--vsock-port N] [--no-vsock] [--stdio]\n");
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  // SIGIO is only ever collected synchronously (sigtimedwait in the serial thread); threads inherit the mask.
  sigset_t io;
  sigemptyset(&io);
  sigaddset(&io, SIGIO);
  pthread_sigmask(SIG_BLOCK, &io, nullptr);
  static fa::LinuxSystemOps sys;
  static fa::AgentContext ctx{&sys, ""};
  if (stdio) return StdioLoop(&ctx);
  if (!serial && !vsock) {
    Log("nothing to serve");
    return 2;
  }
  if (vsock_port == 0) vsock_port = VsockPortFromCmdline(52);
  Log("version %s starting", std::string(fa::kAgentVersion).c_str());
  if (vsock) std::thread(VsockLoop, vsock_port, &ctx).detach();
  if (serial) SerialLoop(serial_name, &ctx);
  for (;;) pause();
}
