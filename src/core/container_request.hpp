// Private: the rules a ContainerRequest (fcwarm/container_manager.hpp) must meet before anything is recorded.
#pragma once

#include <string>

#include "fcwarm/container_manager.hpp"
#include "fcwarm/image_registry.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::internal {

/// "docker" when the image's runtime check is a Docker daemon (the container runs inside it), else "vm" (the
/// VM is the container; a command runs through the agent's exec).
std::string RuntimeOf(const RuntimeImage& image);

/// Checks a request field by field, in this order: id, name, runtime image (resolved by id or by name; none
/// named: `default_runtime_image`, else the one container runtime image), image (a Docker reference, required
/// for a docker runtime, refused otherwise), command, env, their total size, working_dir, user, read_only
/// (docker runtime only), wait_for_creating.
/// \return The runtime image; InvalidArgument naming the first bad field; NotFound for an unknown image.
Result<RuntimeImage> Validate(const ContainerRequest& request, const std::string& default_runtime_image,
                              const ImageRegistry& images);

}  // namespace fcwarm::internal
