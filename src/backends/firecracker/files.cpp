#include "backends/firecracker/files.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "util/common.hpp"

namespace fcwarm::firecracker {
namespace {

std::string Errno() { return std::strerror(errno); }

struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Status CopyRange(int in, int out, off_t start, off_t end, const std::string& what) {
  off_t in_off = start, out_off = start;
  while (in_off < end) {
    size_t want = static_cast<size_t>(std::min<off_t>(end - in_off, 1 << 30));
    ssize_t n = ::copy_file_range(in, &in_off, out, &out_off, want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
      // Fallback: plain read/write.
      std::vector<char> buf(1 << 20);
      while (in_off < end) {
        ssize_t r =
            ::pread(in, buf.data(), std::min<size_t>(buf.size(), static_cast<size_t>(end - in_off)), in_off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
          return Status::Unavailable(what + ": read: " + (r < 0 ? Errno() : "unexpected end of file"));
        ssize_t w = ::pwrite(out, buf.data(), static_cast<size_t>(r), out_off);
        if (w != r) return util::ErrnoStatus(w < 0 ? errno : ENOSPC, what + ": write");  // short: full
        in_off += r;
        out_off += r;
      }
      return Status::Ok();
    }
    if (n < 0) return util::ErrnoStatus(errno, what + ": copy_file_range");
    if (n == 0) return Status::Unavailable(what + ": source shrank during the copy");
  }
  return Status::Ok();
}

}  // namespace

Status CopyFileSparse(const std::string& src, const std::string& dst) {
  const std::string what = "copy " + src + " to " + dst;
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.fd < 0) return Status::NotFound(what + ": " + Errno());
  struct stat st {};
  if (::fstat(in.fd, &st) != 0) return Status::Unavailable(what + ": stat: " + Errno());
  Fd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (out.fd < 0) return util::ErrnoStatus(errno, what);
  if (::ioctl(out.fd, FICLONE, in.fd) == 0) return Status::Ok();
  if (::ftruncate(out.fd, st.st_size) != 0) return util::ErrnoStatus(errno, what + ": truncate");
  off_t pos = 0;
  while (pos < st.st_size) {
    off_t data = ::lseek(in.fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      // SEEK_DATA unsupported: copy everything.
      return CopyRange(in.fd, out.fd, pos, st.st_size, what);
    }
    off_t hole = ::lseek(in.fd, data, SEEK_HOLE);
    if (hole < 0) hole = st.st_size;
    if (auto s = CopyRange(in.fd, out.fd, data, hole, what); !s.ok()) return s;
    pos = hole;
  }
  return Status::Ok();
}

Status LinkOrCopy(const std::string& src, const std::string& dst) {
  ::unlink(dst.c_str());
  if (::link(src.c_str(), dst.c_str()) == 0) return Status::Ok();
  if (errno != EXDEV && errno != EPERM && errno != EMLINK) {
    return Status::Unavailable("link " + src + " to " + dst + ": " + Errno());
  }
  return CopyFileSparse(src, dst);
}

Status MoveFile(const std::string& src, const std::string& dst) {
  if (::rename(src.c_str(), dst.c_str()) == 0) return Status::Ok();
  if (errno != EXDEV) return Status::Unavailable("rename " + src + " to " + dst + ": " + Errno());
  if (auto st = CopyFileSparse(src, dst); !st.ok()) return st;
  ::unlink(src.c_str());
  return Status::Ok();
}

bool SocketAccepts(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.fd < 0) return false;
  return ::connect(s.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
}

void RemoveQuietly(const std::string& path) {
  if (!path.empty()) ::unlink(path.c_str());
}

std::string TailOf(const std::string& path, int lines) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return "";
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return "";
  off_t start = st.st_size > 2048 ? st.st_size - 2048 : 0;
  std::string buf(static_cast<size_t>(st.st_size - start), '\0');
  ssize_t n = ::pread(f.fd, buf.data(), buf.size(), start);
  if (n <= 0) return "";
  buf.resize(static_cast<size_t>(n));
  while (!buf.empty() && (buf.back() == '\n' || buf.back() == '\r')) buf.pop_back();
  size_t pos = buf.size();
  for (int i = 0; i < lines && pos != std::string::npos && pos > 0; ++i) pos = buf.rfind('\n', pos - 1);
  std::string tail = (pos == std::string::npos || pos == 0) ? buf : buf.substr(pos + 1);
  for (auto& c : tail) {
    if (c == '\n') c = '|';
  }
  return tail;
}

}  // namespace fcwarm::firecracker
