// The real machine: syscalls, ioctls and rtnetlink. Used only inside the guest (and never by host tests for
// anything that changes state).
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent_core.hpp"

namespace fcwarm::agent {
namespace {

std::string Errno(const char* what) { return std::string(what) + ": " + strerror(errno); }

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// ---- rtnetlink ----

// Builds one netlink message: header, fixed payload, then attributes.
class NlMsg {
 public:
  NlMsg(uint16_t type, uint16_t flags, const void* payload, std::size_t len) : buf_(NLMSG_SPACE(len), 0) {
    auto* h = reinterpret_cast<nlmsghdr*>(buf_.data());
    h->nlmsg_type = type;
    h->nlmsg_flags = flags;
    memcpy(NLMSG_DATA(h), payload, len);
    h->nlmsg_len = static_cast<uint32_t>(NLMSG_LENGTH(len));
  }
  void Attr(uint16_t type, const void* data, std::size_t len) {
    std::size_t off = NLMSG_ALIGN(hdr()->nlmsg_len);
    buf_.resize(off + RTA_SPACE(len), 0);
    auto* rta = reinterpret_cast<rtattr*>(buf_.data() + off);
    rta->rta_type = type;
    rta->rta_len = static_cast<uint16_t>(RTA_LENGTH(len));
    memcpy(RTA_DATA(rta), data, len);
    hdr()->nlmsg_len = static_cast<uint32_t>(off + RTA_LENGTH(len));
  }
  nlmsghdr* hdr() { return reinterpret_cast<nlmsghdr*>(buf_.data()); }

 private:
  std::vector<char> buf_;
};

class Netlink {
 public:
  Netlink() : fd_(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)) {}
  bool ok() const { return fd_.get() >= 0; }

  // Sends a request with NLM_F_ACK and waits for the ack. Returns an error string or "".
  std::string Request(NlMsg& m) {
    m.hdr()->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    m.hdr()->nlmsg_seq = ++seq_;
    if (send(fd_.get(), m.hdr(), m.hdr()->nlmsg_len, 0) < 0) return Errno("netlink send");
    std::string err;
    bool done = false;
    auto r = Receive([&](nlmsghdr* h) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        if (e->error != 0) err = std::string("netlink: ") + strerror(-e->error);
        done = true;
      }
      return !done;
    });
    if (!r.empty()) return r;
    return err;
  }

  // Sends a dump request and calls `each` for every answer until NLMSG_DONE.
  template <typename F>
  std::string Dump(NlMsg& m, F each) {
    m.hdr()->nlmsg_flags |= NLM_F_REQUEST | NLM_F_DUMP;
    m.hdr()->nlmsg_seq = ++seq_;
    if (send(fd_.get(), m.hdr(), m.hdr()->nlmsg_len, 0) < 0) return Errno("netlink send");
    std::string err;
    auto r = Receive([&](nlmsghdr* h) {
      if (h->nlmsg_type == NLMSG_DONE) return false;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        if (e->error != 0) err = std::string("netlink dump: ") + strerror(-e->error);
        return false;
      }
      each(h);
      return true;
    });
    return r.empty() ? err : r;
  }

 private:
  // Reads messages for the current sequence number; `handle` returns false to stop.
  template <typename F>
  std::string Receive(F handle) {
    std::vector<char> buf(65536);
    for (;;) {
      pollfd p{fd_.get(), POLLIN, 0};
      int pr = poll(&p, 1, 5000);
      if (pr == 0) return "netlink: no answer";
      if (pr < 0) {
        if (errno == EINTR) continue;
        return Errno("netlink poll");
      }
      ssize_t n = recv(fd_.get(), buf.data(), buf.size(), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Errno("netlink recv");
      }
      int len = static_cast<int>(n);
      for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
        if (h->nlmsg_seq != seq_) continue;
        if (!handle(h)) return "";
      }
    }
  }

  Fd fd_;
  uint32_t seq_ = 1000;
};

std::string IfIndex(const std::string& iface, int& index) {
  index = static_cast<int>(if_nametoindex(iface.c_str()));
  if (index == 0) return "no interface " + iface;
  return "";
}

std::string SetLinkUp(Netlink& nl, int index, bool up) {
  ifinfomsg ifi{};
  ifi.ifi_family = AF_UNSPEC;
  ifi.ifi_index = index;
  ifi.ifi_change = IFF_UP;
  ifi.ifi_flags = up ? IFF_UP : 0;
  NlMsg m(RTM_NEWLINK, 0, &ifi, sizeof ifi);
  return nl.Request(m);
}

}  // namespace

std::string LinuxSystemOps::BootId() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string s;
  std::getline(f, s);
  return s;
}

std::chrono::milliseconds LinuxSystemOps::Uptime() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return std::chrono::milliseconds(int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000);
}

std::string LinuxSystemOps::Hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

bool LinuxSystemOps::PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

OpStatus LinuxSystemOps::SetHostname(const std::string& name) {
  if (sethostname(name.data(), name.size()) != 0) return OpStatus::Fail(Errno("sethostname"));
  return OpStatus::Ok();
}

OpStatus LinuxSystemOps::WriteFile(const std::string& path, const std::string& content) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return OpStatus::Fail(Errno(path.c_str()));
  Fd guard(fd);
  std::size_t off = 0;
  while (off < content.size()) {
    ssize_t w = write(fd, content.data() + off, content.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return OpStatus::Fail(Errno(path.c_str()));
    }
    off += static_cast<std::size_t>(w);
  }
  return OpStatus::Ok();
}

OpStatus LinuxSystemOps::SetMac(const std::string& iface, const std::vector<uint8_t>& mac) {
  int index = 0;
  if (auto e = IfIndex(iface, index); !e.empty()) return OpStatus::Fail(e);
  Netlink nl;
  if (!nl.ok()) return OpStatus::Fail(Errno("netlink socket"));
  if (auto e = SetLinkUp(nl, index, false); !e.empty()) return OpStatus::Fail("link down: " + e);
  ifinfomsg ifi{};
  ifi.ifi_family = AF_UNSPEC;
  ifi.ifi_index = index;
  NlMsg m(RTM_NEWLINK, 0, &ifi, sizeof ifi);
  m.Attr(IFLA_ADDRESS, mac.data(), mac.size());
  auto e = nl.Request(m);
  auto up = SetLinkUp(nl, index, true);
  if (!e.empty()) return OpStatus::Fail("set address: " + e);
  if (!up.empty()) return OpStatus::Fail("link up: " + up);
  return OpStatus::Ok();
}

OpStatus LinuxSystemOps::SetIpv4(const std::string& iface, uint32_t addr_be, int prefix) {
  int index = 0;
  if (auto e = IfIndex(iface, index); !e.empty()) return OpStatus::Fail(e);
  Netlink nl;
  if (!nl.ok()) return OpStatus::Fail(Errno("netlink socket"));
  // Collect the interface's IPv4 addresses, then delete them.
  struct Addr {
    ifaddrmsg ifa;
    uint32_t local;
  };
  std::vector<Addr> existing;
  ifaddrmsg q{};
  q.ifa_family = AF_INET;
  NlMsg dump(RTM_GETADDR, 0, &q, sizeof q);
  auto e = nl.Dump(dump, [&](nlmsghdr* h) {
    if (h->nlmsg_type != RTM_NEWADDR) return;
    auto* ifa = static_cast<ifaddrmsg*>(NLMSG_DATA(h));
    if (static_cast<int>(ifa->ifa_index) != index || ifa->ifa_family != AF_INET) return;
    int len = static_cast<int>(IFA_PAYLOAD(h));
    Addr a{*ifa, 0};
    bool have = false;
    for (auto* rta = IFA_RTA(ifa); RTA_OK(rta, len); rta = RTA_NEXT(rta, len)) {
      if (rta->rta_type == IFA_LOCAL || (rta->rta_type == IFA_ADDRESS && !have)) {
        memcpy(&a.local, RTA_DATA(rta), 4);
        have = true;
      }
    }
    if (have) existing.push_back(a);
  });
  if (!e.empty()) return OpStatus::Fail("list addresses: " + e);
  for (auto& a : existing) {
    NlMsg del(RTM_DELADDR, 0, &a.ifa, sizeof a.ifa);
    del.Attr(IFA_LOCAL, &a.local, 4);
    if (auto d = nl.Request(del); !d.empty()) return OpStatus::Fail("delete address: " + d);
  }
  ifaddrmsg ifa{};
  ifa.ifa_family = AF_INET;
  ifa.ifa_prefixlen = static_cast<unsigned char>(prefix);
  ifa.ifa_scope = RT_SCOPE_UNIVERSE;
  ifa.ifa_index = static_cast<unsigned>(index);
  NlMsg add(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &ifa, sizeof ifa);
  add.Attr(IFA_LOCAL, &addr_be, 4);
  add.Attr(IFA_ADDRESS, &addr_be, 4);
  if (prefix < 31) {
    uint32_t mask = prefix == 0 ? 0 : htonl(~((1u << (32 - prefix)) - 1));
    uint32_t bcast = addr_be | ~mask;
    add.Attr(IFA_BROADCAST, &bcast, 4);
  }
  if (auto a = nl.Request(add); !a.empty()) return OpStatus::Fail("add address: " + a);
  if (auto u = SetLinkUp(nl, index, true); !u.empty()) return OpStatus::Fail("link up: " + u);
  return OpStatus::Ok();
}

OpStatus LinuxSystemOps::SetDefaultRoute(const std::string& iface, uint32_t gateway_be) {
  int index = 0;
  if (auto e = IfIndex(iface, index); !e.empty()) return OpStatus::Fail(e);
  Netlink nl;
  if (!nl.ok()) return OpStatus::Fail(Errno("netlink socket"));
  rtmsg rt{};
  rt.rtm_family = AF_INET;
  rt.rtm_dst_len = 0;
  rt.rtm_table = RT_TABLE_MAIN;
  rt.rtm_protocol = RTPROT_BOOT;
  rt.rtm_scope = RT_SCOPE_UNIVERSE;
  rt.rtm_type = RTN_UNICAST;
  NlMsg m(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &rt, sizeof rt);
  m.Attr(RTA_GATEWAY, &gateway_be, 4);
  uint32_t oif = static_cast<uint32_t>(index);
  m.Attr(RTA_OIF, &oif, 4);
  if (auto e = nl.Request(m); !e.empty()) return OpStatus::Fail(e);
  return OpStatus::Ok();
}

OpStatus LinuxSystemOps::AddEntropy(const std::string& bytes) {
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return OpStatus::Fail(Errno("open /dev/urandom"));
  Fd guard(fd);
  if (!bytes.empty()) {
    std::vector<char> buf(sizeof(rand_pool_info) + bytes.size());
    auto* info = reinterpret_cast<rand_pool_info*>(buf.data());
    info->entropy_count = static_cast<int>(bytes.size() * 8);
    info->buf_size = static_cast<int>(bytes.size());
    memcpy(buf.data() + sizeof(rand_pool_info), bytes.data(), bytes.size());
    if (ioctl(fd, RNDADDENTROPY, info) != 0) return OpStatus::Fail(Errno("RNDADDENTROPY"));
  }
  // ENODATA: the CRNG is not initialized yet. The bytes are in the pool and the kernel seeds the CRNG from
  // it as soon as enough bits are credited (256), so there is nothing to force.
  if (ioctl(fd, RNDRESEEDCRNG) != 0 && errno != ENODATA) return OpStatus::Fail(Errno("RNDRESEEDCRNG"));
  return OpStatus::Ok();
}

OpStatus LinuxSystemOps::SetWallClock(int64_t ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1000000000);
  ts.tv_nsec = static_cast<long>(ns % 1000000000);
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) return OpStatus::Fail(Errno("clock_settime"));
  return OpStatus::Ok();
}

void LinuxSystemOps::Sync() { sync(); }

OpStatus LinuxSystemOps::FlushNeighbours() {
  Netlink nl;
  if (!nl.ok()) return OpStatus::Fail(Errno("netlink socket"));
  struct Entry {
    ndmsg nd;
    std::vector<char> dst;
  };
  std::vector<Entry> entries;
  ndmsg q{};
  q.ndm_family = AF_UNSPEC;
  NlMsg dump(RTM_GETNEIGH, 0, &q, sizeof q);
  auto e = nl.Dump(dump, [&](nlmsghdr* h) {
    if (h->nlmsg_type != RTM_NEWNEIGH) return;
    auto* nd = static_cast<ndmsg*>(NLMSG_DATA(h));
    if (nd->ndm_state & (NUD_PERMANENT | NUD_NOARP)) return;
    if (nd->ndm_family != AF_INET && nd->ndm_family != AF_INET6) return;
    int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(ndmsg)));
    for (auto* rta = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(nd) + NLMSG_ALIGN(sizeof(ndmsg)));
         RTA_OK(rta, len); rta = RTA_NEXT(rta, len)) {
      if (rta->rta_type == NDA_DST) {
        auto* p = static_cast<char*>(RTA_DATA(rta));
        entries.push_back(Entry{*nd, std::vector<char>(p, p + RTA_PAYLOAD(rta))});
      }
    }
  });
  if (!e.empty()) return OpStatus::Fail(e);
  for (auto& en : entries) {
    NlMsg del(RTM_DELNEIGH, 0, &en.nd, sizeof en.nd);
    del.Attr(NDA_DST, en.dst.data(), en.dst.size());
    auto d = nl.Request(del);
    // An entry that vanished meanwhile is fine.
    if (!d.empty() && d.find(strerror(ENOENT)) == std::string::npos) return OpStatus::Fail(d);
  }
  return OpStatus::Ok();
}

std::vector<std::string> LinuxSystemOps::ListFiles(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string path = dir + "/" + name;
    struct stat st;
    if (lstat(path.c_str(), &st) == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))) out.push_back(path);
  }
  closedir(d);
  return out;
}

OpStatus LinuxSystemOps::RemoveFile(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR)
    return OpStatus::Fail(Errno("unlink"));
  return OpStatus::Ok();
}

FileContent LinuxSystemOps::ReadFile(const std::string& path, std::size_t max_bytes) {
  FileContent out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) {
      out.exists = true;
      out.error = Errno(path.c_str());
    }
    return out;
  }
  Fd guard(fd);
  out.exists = true;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      out.error = Errno(path.c_str());
      return out;
    }
    if (n == 0) break;
    std::size_t room = max_bytes - out.content.size();
    out.content.append(buf, std::min(static_cast<std::size_t>(n), room));
    if (static_cast<std::size_t>(n) > room) {
      out.truncated = true;
      break;
    }
  }
  return out;
}

OpStatus LinuxSystemOps::ReplaceFile(const std::string& path, const std::string& content, unsigned mode) {
  auto slash = path.rfind('/');
  if (path.empty() || path[0] != '/' || slash == std::string::npos || slash + 1 == path.size())
    return OpStatus::Fail(path + ": not an absolute file path");
  std::string dir = slash == 0 ? "/" : path.substr(0, slash);
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return OpStatus::Fail(Errno(dir.c_str()));
  // A unique temporary name in the same directory: concurrent writers never share one.
  std::string tmp = dir + "/." + path.substr(slash + 1) + ".fcwarm-XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return OpStatus::Fail(Errno(tmp.c_str()));
  auto fail = [&](const char* what) {
    std::string why = Errno(what);
    close(fd);
    unlink(tmp.c_str());
    return OpStatus::Fail(path + ": " + why);
  };
  if (fchmod(fd, static_cast<mode_t>(mode & 07777)) != 0) return fail("fchmod");
  std::size_t off = 0;
  while (off < content.size()) {
    ssize_t w = write(fd, content.data() + off, content.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    off += static_cast<std::size_t>(w);
  }
  if (fsync(fd) != 0) return fail("fsync");
  if (close(fd) != 0) {
    std::string why = Errno("close");
    unlink(tmp.c_str());
    return OpStatus::Fail(path + ": " + why);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = Errno("rename");
    unlink(tmp.c_str());
    return OpStatus::Fail(path + ": " + why);
  }
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);  // the rename is done; a failed directory fsync only weakens durability
    close(dfd);
  }
  return OpStatus::Ok();
}

std::vector<ProcessEntry> LinuxSystemOps::FindProcesses(const std::string& comm) {
  std::vector<ProcessEntry> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string base = "/proc/" + name;
    auto c = ReadFile(base + "/comm", 64);
    if (!c.error.empty() || c.content.empty()) continue;
    std::string cm = c.content;
    if (cm.back() == '\n') cm.pop_back();
    if (cm != comm) continue;
    // Field 3 of /proc/<pid>/stat is the state; it follows the parenthesized comm.
    auto st = ReadFile(base + "/stat", 4096);
    auto close_paren = st.content.rfind(')');
    if (close_paren == std::string::npos || close_paren + 2 >= st.content.size()) continue;
    char state = st.content[close_paren + 2];
    if (state == 'Z' || state == 'X') continue;
    ProcessEntry p;
    p.pid = std::stoi(name);
    auto cl = ReadFile(base + "/cmdline", 65536);
    std::string arg;
    for (char ch : cl.content) {
      if (ch == '\0') {
        p.argv.push_back(std::move(arg));
        arg.clear();
      } else {
        arg.push_back(ch);
      }
    }
    if (!arg.empty()) p.argv.push_back(std::move(arg));
    out.push_back(std::move(p));
  }
  closedir(d);
  std::sort(out.begin(), out.end(),
            [](const ProcessEntry& a, const ProcessEntry& b) { return a.pid < b.pid; });
  return out;
}

OpStatus LinuxSystemOps::SendSignal(int pid, int signal) {
  if (pid <= 0) return OpStatus::Fail("kill: invalid pid " + std::to_string(pid));
  if (kill(pid, signal) != 0) return OpStatus::Fail(Errno("kill"));
  return OpStatus::Ok();
}

ProcessResult LinuxSystemOps::Run(const ProcessSpec& spec) { return RunProcess(spec); }

namespace {

// One HTTP/1.0 exchange on a Unix stream socket; the body goes to `on_body` piece by piece (returning false
// stops reading: `*stopped` is then set and the exchange is not an error here). `x.response` receives the
// head; `*content_length` the announced length, if any.
HttpExchange UnixExchange(const std::string& socket_path, const std::string& request,
                          std::chrono::milliseconds timeout, const std::function<void(const HttpResponse&)>& on_head,
                          const std::function<bool(std::string_view)>& on_body, bool* stopped) {
  using Clock = std::chrono::steady_clock;
  HttpExchange x;
  *stopped = false;
  auto fail = [&](std::string why, bool timed_out = false) {
    x.error = socket_path + ": " + why;
    x.timed_out = timed_out;
    x.response = HttpResponse{};
    return x;
  };
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path)
    return fail("socket path longer than " + std::to_string(sizeof addr.sun_path - 1) + " bytes");
  memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const auto deadline = Clock::now() + timeout;
  auto ms_left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  };
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return fail(Errno("socket"));
  // Waits until `events` or the deadline; false on timeout. POLLHUP/POLLERR count as ready (the following
  // call reports what happened).
  auto wait = [&](short events) {
    for (;;) {
      auto left = ms_left();
      if (left <= 0) return false;
      pollfd p{fd.get(), events, 0};
      int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, INT32_MAX)));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return true;
    }
  };
  const std::string within = " within " + std::to_string(timeout.count()) + " ms";

  // A non-blocking connect on a Unix socket never returns EINPROGRESS; EAGAIN means the listener's backlog
  // is full: retry until the deadline.
  while (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return fail(Errno("connect"));
    if (ms_left() <= 0) return fail("connect: backlog full, not accepted" + within, true);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  std::size_t off = 0;
  while (off < request.size()) {
    ssize_t w = send(fd.get(), request.data() + off, request.size() - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += static_cast<std::size_t>(w);
    } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait(POLLOUT))
        return fail("send: request not accepted" + within + " (" + std::to_string(off) + " of " +
                        std::to_string(request.size()) + " bytes sent)",
                    true);
    } else {
      return fail(Errno("send"));
    }
  }

  const bool head_request = request.compare(0, 5, "HEAD ") == 0;
  HttpResponse& resp = x.response;
  std::string head_buf;  // bytes until the end of the response head
  bool have_head = false;
  std::optional<uint64_t> content_length;  // body length announced (0 when the response has no body)
  uint64_t received = 0;                   // body bytes received (counted up to content_length)
  auto add_body = [&](const char* p, std::size_t n) {
    if (content_length) n = static_cast<std::size_t>(std::min<uint64_t>(n, *content_length - received));
    received += n;
    if (n > 0 && !on_body(std::string_view(p, n))) *stopped = true;
  };
  std::vector<char> buf(65536);
  for (;;) {
    if (have_head && (*stopped || (content_length && received >= *content_length))) break;
    if (!wait(POLLIN)) {
      std::string got = have_head ? "status " + std::to_string(resp.status) + " and " +
                                        std::to_string(received) + " body bytes"
                                  : std::to_string(head_buf.size()) + " bytes";
      return fail("no complete response" + within + " (got " + got + ")", true);
    }
    ssize_t n = recv(fd.get(), buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return fail(Errno("recv"));
    }
    if (n == 0) break;  // EOF: an HTTP/1.0 server closes after the response
    if (have_head) {
      add_body(buf.data(), static_cast<std::size_t>(n));
      continue;
    }
    head_buf.append(buf.data(), static_cast<std::size_t>(n));
    auto end = head_buf.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (head_buf.size() > kMaxHttpHeadBytes)
        return fail("unparsable response: no end of the header within " + std::to_string(kMaxHttpHeadBytes) +
                    " bytes");
      continue;
    }
    if (end > kMaxHttpHeadBytes)
      return fail("unparsable response: header longer than " + std::to_string(kMaxHttpHeadBytes) + " bytes");
    if (auto why = ParseHttpHead(std::string_view(head_buf).substr(0, end), resp); !why.empty())
      return fail("unparsable response: " + why);
    have_head = true;
    if (auto te = resp.Header("Transfer-Encoding"); te && *te != "identity")
      return fail("unsupported response: Transfer-Encoding " + *te +
                  " (expected none for an HTTP/1.0 request)");
    if (head_request || resp.status < 200 || resp.status == 204 || resp.status == 304) {
      content_length = 0;  // no body, whatever Content-Length says
    } else if (auto cl = resp.Header("Content-Length")) {
      if (cl->empty() || cl->size() > 18 || cl->find_first_not_of("0123456789") != std::string::npos)
        return fail("unparsable response: Content-Length \"" + cl->substr(0, 32) + "\"");
      content_length = std::stoull(*cl);
    }
    on_head(resp);
    add_body(head_buf.data() + end + 4, head_buf.size() - end - 4);
    head_buf.clear();
  }
  if (!have_head) {
    if (head_buf.empty()) return fail("connection closed without a response");
    std::string first = head_buf.substr(0, std::min<std::size_t>(head_buf.find('\n'), 80));
    for (char& c : first)
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    return fail("unparsable response: connection closed inside the header (starts \"" + first + "\")");
  }
  if (content_length && received < *content_length && !*stopped)
    return fail("response ended after " + std::to_string(received) + " of " +
                std::to_string(*content_length) + " body bytes");
  return x;
}

}  // namespace

HttpExchange LinuxSystemOps::UnixHttp(const std::string& socket_path, const std::string& request,
                                      std::chrono::milliseconds timeout, std::size_t max_body) {
  std::string body;
  bool truncated = false;
  std::optional<uint64_t> announced;
  auto on_head = [&](const HttpResponse& r) {
    if (auto cl = r.Header("Content-Length"); cl && !cl->empty() && cl->size() <= 18 &&
                                               cl->find_first_not_of("0123456789") == std::string::npos)
      announced = std::stoull(*cl);
  };
  auto on_body = [&](std::string_view piece) {
    std::size_t room = max_body - body.size();
    body.append(piece.substr(0, room));
    // Reading stops once the cap is reached and more is known (or found) to follow.
    if (piece.size() > room || (announced && *announced > max_body && body.size() >= max_body)) {
      truncated = true;
      return false;
    }
    return true;
  };
  bool stopped = false;
  HttpExchange x = UnixExchange(socket_path, request, timeout, on_head, on_body, &stopped);
  if (x.ok()) {
    x.response.body = std::move(body);
    x.response.truncated = truncated;
  }
  return x;
}

HttpExchange LinuxSystemOps::UnixHttpStream(const std::string& socket_path, const std::string& request,
                                            std::chrono::milliseconds timeout,
                                            const std::function<void(const HttpResponse&)>& on_head,
                                            const std::function<bool(std::string_view)>& on_body) {
  bool stopped = false;
  HttpExchange x = UnixExchange(socket_path, request, timeout, on_head, on_body, &stopped);
  if (x.ok() && stopped) {
    x.error = socket_path + ": stopped by the reader";
    x.response = HttpResponse{};
  }
  return x;
}

}  // namespace fcwarm::agent
