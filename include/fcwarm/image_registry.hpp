/// \file
/// \brief Registration of runtime images (what VMs boot).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

/// \brief The runtime image for guest artifacts built by this project's scripts (not yet registered).
///
/// Kind "minimal": `guest/build-artifacts.sh` output (bzImage, initramfs.cpio.gz, disk.ext4; 512 MiB; ready
/// when `/run/fcwarm-runtime-ready` exists). Kind "docker": `guest/build-docker-image.sh` output (bzImage,
/// initramfs.cpio.gz, docker-rootfs.ext4; 1024 MiB; ready when dockerd answers `_ping` on
/// `/var/run/docker.sock`). The image is named after its kind; paths are made absolute.
/// \param kind "minimal" or "docker".
/// \param dir The artifact directory.
/// \param backend The backend that runs it. Default: "qemu".
/// \return The image; InvalidArgument for an unknown kind; NotFound naming a missing file.
Result<RuntimeImage> RuntimeImageFromArtifacts(const std::string& kind, const std::string& dir,
                                               const std::string& backend = "qemu");

/// \brief Registers, lists and removes runtime images. Validates every field before anything is written.
///
/// Thread safety: safe for concurrent use.
class ImageRegistry {
 public:
  /// \brief Creates a registry over a store.
  /// \param store The store; must outlive the registry.
  /// \param vmms Known backends (an image naming an unknown backend is refused); must outlive the registry.
  ImageRegistry(Store& store, const VmmRegistry& vmms);

  /// \brief Validates and stores an image. `id` and `created_at` are assigned.
  /// \param image The image; `name`, `backend`, `kernel_path` are required, paths must be absolute existing
  /// regular files, shape within limits (see VmShape), runtime check kind known, `preload_images` valid
  /// Docker references (ParseImageReference), each once, at most 32, only for runtime check kind "docker".
  /// \return The stored image; InvalidArgument naming the bad field; AlreadyExists for a duplicate name.
  Result<RuntimeImage> Register(RuntimeImage image);
  /// \brief Finds an image by id.
  /// \param id The id text (validated).
  /// \return The image; InvalidArgument for a malformed id; NotFound.
  Result<RuntimeImage> Get(const std::string& id) const;
  /// \brief Finds an image by name.
  /// \param name The name (validated).
  /// \return The image; InvalidArgument; NotFound.
  Result<RuntimeImage> GetByName(const std::string& name) const;
  /// \brief Lists images, newest first.
  Result<std::vector<RuntimeImage>> List() const;
  /// \brief Removes an image that has no non-deleted snapshot and no live VM.
  /// \param id The id text.
  /// \return Ok; InvalidArgument; NotFound; FailedPrecondition when still in use.
  Status Remove(const std::string& id);

 private:
  Store& store_;
  const VmmRegistry& vmms_;
};

}  // namespace fcwarm
