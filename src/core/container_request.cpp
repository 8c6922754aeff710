#include "core/container_request.hpp"

#include "fcwarm/ids.hpp"

namespace fcwarm::internal {
namespace {

constexpr size_t kMaxArgs = 256;
constexpr size_t kMaxEnv = 256;
// The whole command + env must fit one agent request line (64 KiB, base64-encoded) with room to spare.
constexpr size_t kMaxSpecBytes = 32 * 1024;

Status ValidateEnvName(const std::string& k) {
  bool ok = !k.empty() && k.size() <= 256 && !(k[0] >= '0' && k[0] <= '9');
  for (char c : k) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
  }
  if (!ok) return Status::InvalidArgument("env: '" + k.substr(0, 64) + "' is not a valid variable name");
  return Status::Ok();
}

// A Docker image reference: [registry/]name[:tag][@digest], printable, no spaces, not starting with '-'.
Status ValidateImageRef(const std::string& ref) {
  if (ref.empty()) return Status::InvalidArgument("container_image: is required for a docker runtime image");
  if (ref.size() > 255) return Status::InvalidArgument("container_image: longer than 255 characters");
  auto invalid = [&] {
    return Status::InvalidArgument("container_image: '" + ref.substr(0, 64) +
                                   "' is not a valid image reference");
  };
  if (ref[0] == '-' || ref[0] == '/' || ref[0] == '.' || ref[0] == ':') return invalid();
  for (char c : ref) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-' || c == '/' || c == ':' || c == '@';
    if (!ok) return invalid();
  }
  if (ref.find("..") != std::string::npos || ref.find("//") != std::string::npos) return invalid();
  return Status::Ok();
}

// The runtime image a request names, by id or by name.
Result<RuntimeImage> ResolveImage(const std::string& ref, const ImageRegistry& images) {
  if (ref.empty()) return Status::InvalidArgument("runtime_image: is required");
  if (Id::IsValid(ref)) return images.Get(ref);
  if (auto st = ValidateName("runtime_image", ref); !st.ok()) {
    return Status::InvalidArgument("runtime_image: '" + ref.substr(0, 64) +
                                   "' is neither an image id nor a valid image name");
  }
  return images.GetByName(ref);
}

Status ValidateContainerImage(const ContainerRequest& req, const RuntimeImage& image) {
  if (RuntimeOf(image) == "docker") return ValidateImageRef(req.container_image);
  if (req.container_image.empty()) return Status::Ok();
  return Status::InvalidArgument("container_image: runtime image '" + image.name +
                                 "' has no container runtime (its runtime check is '" +
                                 image.runtime_check.kind + "', not 'docker'); leave container_image empty");
}

Status ValidateCommandAndEnv(const ContainerRequest& req) {
  if (req.command.size() > kMaxArgs) {
    return Status::InvalidArgument("command: more than " + std::to_string(kMaxArgs) + " arguments");
  }
  size_t bytes = 0;
  for (size_t i = 0; i < req.command.size(); ++i) {
    if (req.command[i].find('\0') != std::string::npos) {
      return Status::InvalidArgument("command[" + std::to_string(i) + "]: contains a NUL byte");
    }
    bytes += req.command[i].size();
  }
  if (req.env.size() > kMaxEnv) {
    return Status::InvalidArgument("env: more than " + std::to_string(kMaxEnv) + " variables");
  }
  for (const auto& [k, v] : req.env) {
    if (auto st = ValidateEnvName(k); !st.ok()) return st;
    if (v.find('\0') != std::string::npos)
      return Status::InvalidArgument("env." + k + ": contains a NUL byte");
    bytes += k.size() + v.size();
  }
  if (bytes > kMaxSpecBytes) {
    return Status::InvalidArgument("command/env: " + std::to_string(bytes) + " bytes in total, more than " +
                                   std::to_string(kMaxSpecBytes));
  }
  return Status::Ok();
}

}  // namespace

std::string RuntimeOf(const RuntimeImage& image) {
  return image.runtime_check.kind == "docker" ? "docker" : "vm";
}

Result<RuntimeImage> Validate(const ContainerRequest& req, const ImageRegistry& images) {
  if (!req.id.empty()) {
    if (auto p = Id::Parse("id", req.id); !p.ok()) return p.status();
  }
  if (!req.name.empty()) {
    if (auto st = ValidateName("name", req.name); !st.ok()) return st;
  }
  auto image = ResolveImage(req.runtime_image, images);
  if (!image.ok()) return image;
  if (auto st = ValidateContainerImage(req, *image); !st.ok()) return st;
  if (auto st = ValidateCommandAndEnv(req); !st.ok()) return st;
  if (req.wait_for_creating &&
      (req.wait_for_creating->count() < 0 || *req.wait_for_creating > std::chrono::hours(1))) {
    return Status::InvalidArgument("wait_for_creating: must be between 0 and 3600000 ms");
  }
  return image;
}

}  // namespace fcwarm::internal
