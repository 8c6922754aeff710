#include "fcwarm/image_registry.hpp"

#include <sys/stat.h>

#include <filesystem>

#include "core/internal.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/image_reference.hpp"
#include "store/images.hpp"
#include "store/snapshots.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"

namespace fcwarm {

namespace {

Status ValidateFilePath(std::string_view field, const std::string& path, bool required) {
  if (path.empty()) {
    if (required) return Status::InvalidArgument(std::string(field) + ": is required");
    return Status::Ok();
  }
  if (path.size() > 4096) return Status::InvalidArgument(std::string(field) + ": longer than 4096 bytes");
  if (path.find('\0') != std::string::npos || path.find('\n') != std::string::npos) {
    return Status::InvalidArgument(std::string(field) + ": contains a NUL or newline");
  }
  if (path[0] != '/') return Status::InvalidArgument(std::string(field) + ": '" + path + "' is not an absolute path");
  for (size_t pos = 0; pos != std::string::npos;) {
    size_t next = path.find('/', pos + 1);
    auto part = path.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
    if (part == "..") return Status::InvalidArgument(std::string(field) + ": '" + path + "' contains '..'");
    pos = next;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return Status::InvalidArgument(std::string(field) + ": '" + path + "' does not exist");
  }
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(std::string(field) + ": '" + path + "' is not a regular file");
  }
  return Status::Ok();
}

Status ValidateCheck(const RuntimeCheck& c) {
  if (c.kind == "none") return Status::Ok();
  if (c.kind == "file" || c.kind == "docker") {
    if (c.path.empty() || c.path[0] != '/' || c.path.size() > 1024) {
      return Status::InvalidArgument("runtime_check.path: an absolute path is required for kind '" + c.kind + "'");
    }
    return Status::Ok();
  }
  if (c.kind == "command") {
    if (c.argv.empty() || c.argv[0].empty()) {
      return Status::InvalidArgument("runtime_check.argv: a non-empty argv is required for kind 'command'");
    }
    if (c.argv.size() > 64) return Status::InvalidArgument("runtime_check.argv: more than 64 arguments");
    return Status::Ok();
  }
  return Status::InvalidArgument("runtime_check.kind: '" + c.kind + "' is not one of none, file, docker, command");
}

// Container images a build pulls: Docker references (stored in canonical spelling), each once, at most 32,
// and only for container runtime images.
Status ValidatePreload(RuntimeImage& image) {
  auto& list = image.preload_images;
  if (list.empty()) return Status::Ok();
  if (image.runtime_check.kind != "docker") {
    return Status::InvalidArgument(
        "preload_images: only container runtime images (runtime_check.kind 'docker') pull "
        "images; this one has kind '" +
        image.runtime_check.kind + "'");
  }
  auto canonical = internal::CheckPreloadList(list);
  if (!canonical.ok()) return canonical.status();
  list = std::move(canonical).value();
  return Status::Ok();
}

}  // namespace

ImageRegistry::ImageRegistry(Store& store, const VmmRegistry& vmms) : store_(store), vmms_(vmms) {}

Result<RuntimeImage> ImageRegistry::Register(RuntimeImage image) {
  if (auto st = ValidateName("name", image.name); !st.ok()) return st;
  if (image.backend.empty()) return Status::InvalidArgument("backend: is required");
  if (!vmms_.Find(image.backend)) {
    std::string known;
    for (const auto& k : vmms_.Kinds()) known += (known.empty() ? "" : ", ") + k;
    return Status::InvalidArgument("backend: '" + image.backend + "' is not available (available: " +
                                   (known.empty() ? "none" : known) + ")");
  }
  if (auto st = ValidateFilePath("kernel_path", image.kernel_path, true); !st.ok()) return st;
  if (auto st = ValidateFilePath("initrd_path", image.initrd_path, false); !st.ok()) return st;
  if (auto st = ValidateFilePath("rootfs_path", image.rootfs_path, false); !st.ok()) return st;
  if (image.boot_args.size() > 2048) return Status::InvalidArgument("boot_args: longer than 2048 bytes");
  for (char c : image.boot_args) {
    if (c == '\0' || c == '\n' || c == '\r') return Status::InvalidArgument("boot_args: contains a control character");
  }
  if (image.shape.vcpus < 1 || image.shape.vcpus > 64) {
    return Status::InvalidArgument("vcpus: " + std::to_string(image.shape.vcpus) + " is outside 1-64");
  }
  if (image.shape.memory_mib < 64 || image.shape.memory_mib > 262144) {
    return Status::InvalidArgument("memory_mib: " + std::to_string(image.shape.memory_mib) + " is outside 64-262144");
  }
  if (auto st = ValidateCheck(image.runtime_check); !st.ok()) return st;
  if (auto st = ValidatePreload(image); !st.ok()) return st;

  image.id = Id::Generate().str();
  image.created_at = util::NowMillis();
  return detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Result<RuntimeImage> {
    if (detail::ImageNameTaken(db, image.name)) {
      return Status::AlreadyExists("name: an image named '" + image.name + "' exists already");
    }
    detail::InsertImage(db, image);
    return image;
  });
}

Result<RuntimeImage> ImageRegistry::Get(const std::string& id) const {
  auto parsed = Id::Parse("runtime_image_id", id);
  if (!parsed.ok()) return parsed.status();
  return detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ImageById(db, id); });
}

Result<RuntimeImage> ImageRegistry::GetByName(const std::string& name) const {
  if (auto st = ValidateName("name", name); !st.ok()) return st;
  return detail::DbOf(store_).With([&](SQLite::Database& db) { return detail::ImageByName(db, name); });
}

Result<std::vector<RuntimeImage>> ImageRegistry::List() const {
  return detail::DbOf(store_).With(
      [&](SQLite::Database& db) -> Result<std::vector<RuntimeImage>> { return detail::ListImages(db); });
}

Status ImageRegistry::Remove(const std::string& id) {
  if (auto parsed = Id::Parse("runtime_image_id", id); !parsed.ok()) return parsed.status();
  return detail::DbOf(store_).Tx([&](SQLite::Database& db) -> Status {
    auto img = detail::ImageById(db, id);
    if (!img.ok()) return img.status();
    if (detail::CountLiveSnapshots(db, id) > 0) {
      return Status::FailedPrecondition("runtime image '" + id + "' still has runtime snapshots; delete them first");
    }
    if (detail::CountLiveVms(db, id) > 0) {
      return Status::FailedPrecondition("runtime image '" + id + "' is used by live VMs; destroy them first");
    }
    if (detail::CountKeptGenerations(db, id) > 0) {
      return Status::FailedPrecondition("runtime image '" + id +
                                        "' still has snapshot files awaiting garbage collection");
    }
    detail::DeleteImage(db, id);
    return Status::Ok();
  });
}

Result<RuntimeImage> RuntimeImageFromArtifacts(const std::string& kind, const std::string& dir,
                                               const std::string& backend) {
  if (kind != "minimal" && kind != "docker") {
    return Status::InvalidArgument("kind: must be 'minimal' or 'docker', not '" + kind.substr(0, 64) + "'");
  }
  std::error_code ec;
  std::filesystem::path d = std::filesystem::absolute(dir, ec);
  if (ec || dir.empty()) return Status::InvalidArgument("dir: '" + dir + "' is not a usable directory");
  RuntimeImage img;
  img.name = kind;
  img.backend = backend;
  img.kernel_path = (d / "bzImage").string();
  img.initrd_path = (d / "initramfs.cpio.gz").string();
  if (kind == "docker") {
    img.rootfs_path = (d / "docker-rootfs.ext4").string();
    img.shape.memory_mib = 1024;
    img.runtime_check = {"docker", "/var/run/docker.sock", {}};
  } else {
    img.rootfs_path = (d / "disk.ext4").string();
    img.shape.memory_mib = 512;
    img.runtime_check = {"file", "/run/fcwarm-runtime-ready", {}};
  }
  for (const auto& p : {img.kernel_path, img.initrd_path, img.rootfs_path}) {
    if (!std::filesystem::is_regular_file(p, ec)) {
      return Status::NotFound(kind + " guest artifact " + p + " is missing");
    }
  }
  return img;
}

}  // namespace fcwarm
