// Helpers shared by the real-VM tests (label `vm`).
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "fcwarm/qemu_vmm.hpp"

namespace fcwarm::vmtest {
namespace fs = std::filesystem;

// The guest artifacts directory (FCWARM_GUEST_DIR, default /var/cache/fcwarm/guest/current).
inline std::string GuestDir() {
  const char* e = std::getenv("FCWARM_GUEST_DIR");
  return e && *e ? e : "/var/cache/fcwarm/guest/current";
}

// Empty when the tier can run, else why not.
inline std::string SkipReason() {
  QemuOptions o;
  if (auto st = ProbeQemu(o); !st.ok()) return "QEMU unusable: " + st.ToString();
  std::string g = GuestDir();
  for (const char* f : {"bzImage", "initramfs.cpio.gz", "disk.ext4"}) {
    if (!fs::exists(fs::path(g) / f)) {
      return "guest artifact " + (fs::path(g) / f).string() +
             " missing (build with guest/build-artifacts.sh, or set FCWARM_GUEST_DIR)";
    }
  }
  return "";
}

}  // namespace fcwarm::vmtest

#define SKIP_UNLESS_READY()                         \
  do {                                              \
    std::string why = fcwarm::vmtest::SkipReason(); \
    if (!why.empty()) {                       \
      MESSAGE("SKIP: " << why);               \
      std::printf("SKIP: %s\n", why.c_str()); \
      return;                                 \
    }                                         \
  } while (0)

namespace fcwarm::vmtest {

// True when the host reaches `ip`: a TCP connect to a closed port is answered with RST (ECONNREFUSED).
inline bool Reachable(const std::string& ip) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(9);
  ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  bool ok = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    ok = true;
  } else if (errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, 3000) == 1) {
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      ok = err == 0 || err == ECONNREFUSED;
    }
  }
  ::close(fd);
  return ok;
}


}  // namespace fcwarm::vmtest
