#include "util/common.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace fcwarm::util {
namespace fs = std::filesystem;
namespace json = boost::json;

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

namespace {
std::string Hex128(XXH128_hash_t h) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return buf;
}
std::string Errno() { return std::strerror(errno); }
}  // namespace

std::string Xxh3Hex(std::string_view data) { return Hex128(XXH3_128bits(data.data(), data.size())); }

Result<std::string> Xxh3File(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::NotFound("cannot open " + path.string() + ": " + Errno());
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  std::vector<char> buf(1 << 20);
  Status err;
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = Status::Unavailable("cannot read " + path.string() + ": " + Errno());
      break;
    }
    if (n == 0) break;
    XXH3_128bits_update(st, buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  auto digest = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  if (!err.ok()) return err;
  return Hex128(digest);
}

Result<int> MemfdWithText(const char* name, const std::string& text) {
  int fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return Status::Unavailable(std::string("memfd_create: ") + std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      return Status::Unavailable(std::string("write ") + name + ": " + std::strerror(err));
    }
    off += static_cast<size_t>(n);
  }
  return fd;
}

Status FsyncPath(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Unavailable("cannot open " + path.string() + " for fsync: " + Errno());
  int r = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (r != 0) return ErrnoStatus(e, "fsync " + path.string());
  return Status::Ok();
}

bool IsNoSpace(int err) { return err == ENOSPC || err == EDQUOT; }

Status ErrnoStatus(int err, const std::string& what, StatusCode otherwise) {
  auto code = IsNoSpace(err) ? StatusCode::kResourceExhausted : otherwise;
  return Status(code, what + ": " + std::strerror(err));
}

bool MentionsNoSpace(std::string_view text) {
  for (int err : {ENOSPC, EDQUOT}) {
    if (text.find(std::strerror(err)) != std::string_view::npos) return true;
  }
  return false;
}

Status WriteFileDurable(const fs::path& path, std::string_view data) {
  fs::path tmp = path;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "cannot create " + tmp.string());
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {  // a full file system ends a write short first, then fails it with ENOSPC
      int e = n < 0 ? errno : ENOSPC;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoStatus(e, "write " + tmp.string());
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoStatus(e, "fsync " + tmp.string());
  }
  if (::close(fd) != 0 && IsNoSpace(errno)) {  // NFS and quotas may report ENOSPC only at close
    int e = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus(e, "close " + tmp.string());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus(e, "rename " + tmp.string());
  }
  return FsyncPath(path.parent_path());
}

Result<std::string> ReadFile(const fs::path& path, size_t max_bytes) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::NotFound("cannot open " + path.string());
  std::string out;
  char buf[65536];
  while (f) {
    f.read(buf, sizeof(buf));
    out.append(buf, static_cast<size_t>(f.gcount()));
    if (out.size() > max_bytes) return Status::InvalidArgument(path.string() + " is larger than allowed");
  }
  return out;
}

Status MakeDirs(const fs::path& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return ErrnoStatus(ec.value(), "cannot create directory " + path.string());
  return Status::Ok();
}

uint64_t RemoveTree(const fs::path& path) {
  uint64_t apparent = 0, allocated = 0;
  DiskUsage(path, &apparent, &allocated);
  std::error_code ec;
  fs::remove_all(path, ec);
  return allocated;
}

void DiskUsage(const fs::path& path, uint64_t* apparent, uint64_t* allocated) {
  *apparent = 0;
  *allocated = 0;
  std::error_code ec;
  auto add = [&](const fs::path& p) {
    struct stat st;
    if (::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      *apparent += static_cast<uint64_t>(st.st_size);
      *allocated += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  };
  if (!fs::exists(path, ec)) return;
  if (!fs::is_directory(path, ec)) {
    add(path);
    return;
  }
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    add(it->path());
  }
}

int64_t MtimeNs(const fs::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::string TimingsToJson(const Timings& t) {
  json::object o;
  for (const auto& [k, v] : t) o[k] = v;
  return json::serialize(o);
}

Timings TimingsFromJson(std::string_view s) {
  Timings t;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_object()) return t;
  for (const auto& [k, val] : v.as_object()) {
    if (val.is_double()) t[std::string(k)] = val.as_double();
    else if (val.is_int64()) t[std::string(k)] = static_cast<double>(val.as_int64());
    else if (val.is_uint64()) t[std::string(k)] = static_cast<double>(val.as_uint64());
  }
  return t;
}

std::string StringMapToJson(const std::map<std::string, std::string>& m) {
  json::object o;
  for (const auto& [k, v] : m) o[k] = v;
  return json::serialize(o);
}

std::map<std::string, std::string> StringMapFromJson(std::string_view s) {
  std::map<std::string, std::string> m;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_object()) return m;
  for (const auto& [k, val] : v.as_object())
    if (val.is_string()) m[std::string(k)] = std::string(val.as_string());
  return m;
}

std::string FilesToJson(const std::vector<SnapshotFile>& files) {
  json::array a;
  for (const auto& f : files) {
    a.push_back(json::object{{"name", f.name}, {"size", f.size}, {"mtime_ns", f.mtime_ns}, {"xxh3", f.xxh3}});
  }
  return json::serialize(a);
}

namespace {
json::array StringArray(const std::vector<std::string>& v) {
  json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return a;
}
std::vector<std::string> StringsOf(const json::object& o, std::string_view key) {
  std::vector<std::string> out;
  if (auto* p = o.if_contains(key); p && p->is_array()) {
    for (const auto& e : p->as_array())
      if (e.is_string()) out.emplace_back(e.as_string());
  }
  return out;
}
std::string StringOf(const json::object& o, std::string_view key) {
  auto* p = o.if_contains(key);
  return p && p->is_string() ? std::string(p->as_string()) : std::string();
}
}  // namespace

std::string ParkedToJson(const std::vector<ParkedContainer>& parked) {
  json::array a;
  for (const auto& p : parked) {
    a.push_back(json::object{{"name", p.name},
                             {"docker_id", p.docker_id},
                             {"image", p.image},
                             {"channel", p.channel},
                             {"entrypoint", StringArray(p.entrypoint)},
                             {"cmd", StringArray(p.cmd)},
                             {"env", StringArray(p.env)},
                             {"working_dir", p.working_dir},
                             {"user", p.user}});
  }
  return json::serialize(a);
}

std::vector<ParkedContainer> ParkedFromJson(std::string_view s) {
  std::vector<ParkedContainer> out;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_array()) return out;
  for (const auto& e : v.as_array()) {
    if (!e.is_object()) continue;
    const auto& o = e.as_object();
    ParkedContainer p;
    p.name = StringOf(o, "name");
    p.docker_id = StringOf(o, "docker_id");
    p.image = StringOf(o, "image");
    p.channel = StringOf(o, "channel");
    p.entrypoint = StringsOf(o, "entrypoint");
    p.cmd = StringsOf(o, "cmd");
    p.env = StringsOf(o, "env");
    p.working_dir = StringOf(o, "working_dir");
    p.user = StringOf(o, "user");
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<SnapshotFile> FilesFromJson(std::string_view s) {
  std::vector<SnapshotFile> out;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_array()) return out;
  for (const auto& e : v.as_array()) {
    if (!e.is_object()) continue;
    const auto& o = e.as_object();
    SnapshotFile f;
    if (auto* p = o.if_contains("name"); p && p->is_string()) f.name = std::string(p->as_string());
    if (auto* p = o.if_contains("size"); p) f.size = p->is_uint64() ? p->as_uint64() : static_cast<uint64_t>(p->to_number<int64_t>());
    if (auto* p = o.if_contains("mtime_ns"); p) f.mtime_ns = p->to_number<int64_t>();
    if (auto* p = o.if_contains("xxh3"); p && p->is_string()) f.xxh3 = std::string(p->as_string());
    out.push_back(std::move(f));
  }
  return out;
}

std::string StringListToJson(const std::vector<std::string>& v) {
  json::array a;
  for (const auto& s : v) a.emplace_back(s);
  return json::serialize(a);
}

std::vector<std::string> StringListFromJson(std::string_view s) {
  std::vector<std::string> out;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_array()) return out;
  for (const auto& e : v.as_array())
    if (e.is_string()) out.emplace_back(e.as_string());
  return out;
}

std::string RuntimeCheckToJson(const RuntimeCheck& c) {
  json::object o{{"kind", c.kind}};
  if (!c.path.empty()) o["path"] = c.path;
  if (!c.argv.empty()) o["argv"] = json::value_from(c.argv);
  return json::serialize(o);
}

RuntimeCheck RuntimeCheckFromJson(std::string_view s) {
  RuntimeCheck c;
  boost::system::error_code ec;
  auto v = json::parse(s, ec);
  if (ec || !v.is_object()) return c;
  const auto& o = v.as_object();
  if (auto* p = o.if_contains("kind"); p && p->is_string()) c.kind = std::string(p->as_string());
  if (auto* p = o.if_contains("path"); p && p->is_string()) c.path = std::string(p->as_string());
  if (auto* p = o.if_contains("argv"); p && p->is_array())
    for (const auto& a : p->as_array())
      if (a.is_string()) c.argv.emplace_back(a.as_string());
  return c;
}

bool IsWithin(const fs::path& root, const fs::path& child) {
  auto r = root.lexically_normal();
  auto c = child.lexically_normal();
  auto rel = c.lexically_relative(r);
  if (rel.empty()) return false;
  auto first = *rel.begin();
  return first != ".." && first != ".";
}

}  // namespace fcwarm::util
