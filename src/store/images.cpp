#include "store/images.hpp"

#include "store/sql.hpp"
#include "util/common.hpp"

namespace fcwarm::detail {
namespace {

const RowMap<RuntimeImage>& ImageRows() {
  static const RowMap<RuntimeImage> kRows{
      Col("id", &RuntimeImage::id),
      Col("name", &RuntimeImage::name),
      Col("backend", &RuntimeImage::backend),
      Col("kernel_path", &RuntimeImage::kernel_path),
      Col("initrd_path", &RuntimeImage::initrd_path),
      Col("rootfs_path", &RuntimeImage::rootfs_path),
      Col("boot_args", &RuntimeImage::boot_args),
      Col("vcpus", &RuntimeImage::shape, &VmShape::vcpus),
      Col("memory_mib", &RuntimeImage::shape, &VmShape::memory_mib),
      Col("runtime_check", &RuntimeImage::runtime_check),
      Col("preload_images", &RuntimeImage::preload_images),
      Col("created_at", &RuntimeImage::created_at),
  };
  return kRows;
}

}  // namespace

Result<RuntimeImage> ImageById(SQLite::Database& db, const std::string& id) {
  auto image = ImageRows().One(db, "FROM runtime_images WHERE id = ?", id);
  if (!image) return Status::NotFound("runtime image '" + id + "' not found");
  return *image;
}

Result<RuntimeImage> ImageByName(SQLite::Database& db, const std::string& name) {
  auto image = ImageRows().One(db, "FROM runtime_images WHERE name = ?", name);
  if (!image) return Status::NotFound("runtime image named '" + name + "' not found");
  return *image;
}

std::vector<RuntimeImage> ListImages(SQLite::Database& db) {
  return ImageRows().All(db, "FROM runtime_images ORDER BY created_at DESC, id");
}

bool ImageNameTaken(SQLite::Database& db, const std::string& name) {
  return Exists(db, "SELECT 1 FROM runtime_images WHERE name = ?", name);
}

void InsertImage(SQLite::Database& db, const RuntimeImage& image) {
  Exec(db,
       "INSERT INTO runtime_images(id, name, backend, kernel_path, initrd_path, rootfs_path, boot_args, "
       "vcpus, "
       "memory_mib, runtime_check, preload_images, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
       image.id, image.name, image.backend, image.kernel_path, image.initrd_path, image.rootfs_path,
       image.boot_args, image.shape.vcpus, image.shape.memory_mib,
       util::RuntimeCheckToJson(image.runtime_check), util::StringListToJson(image.preload_images),
       image.created_at);
}

void DeleteImage(SQLite::Database& db, const std::string& id) {
  Exec(db, "DELETE FROM runtime_images WHERE id = ?", id);
}

}  // namespace fcwarm::detail
