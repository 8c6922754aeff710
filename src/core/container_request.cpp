#include "core/container_request.hpp"

#include <algorithm>

#include "fcwarm/ids.hpp"
#include "fcwarm/image_reference.hpp"

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

// The runtime image a request names, by id or by name; none named: the default (see ContainerRequest).
Result<RuntimeImage> ResolveImage(const std::string& named, const std::string& default_image,
                                  const ImageRegistry& images) {
  std::string ref = named.empty() ? default_image : named;
  if (ref.empty()) {
    auto all = images.List();
    if (!all.ok()) return all.status();
    std::vector<RuntimeImage> runtimes;
    for (auto& i : *all) {
      if (RuntimeOf(i) == "docker") runtimes.push_back(std::move(i));
    }
    if (runtimes.size() == 1) return runtimes.front();
    if (runtimes.empty()) {
      return Status::InvalidArgument(
          "runtime_image: none named and no container runtime image is registered (one whose runtime check "
          "kind is 'docker'); register one, or name a runtime image");
    }
    std::sort(runtimes.begin(), runtimes.end(), [](const auto& x, const auto& y) { return x.name < y.name; });
    std::string names;
    for (const auto& i : runtimes) names += (names.empty() ? "" : ", ") + i.name;
    return Status::InvalidArgument("runtime_image: none named and " + std::to_string(runtimes.size()) +
                                   " container runtime images are registered (" + names +
                                   "); name one with runtime_image, or set a default (fcwarm-server "
                                   "--default-runtime-image)");
  }
  if (Id::IsValid(ref)) return images.Get(ref);
  if (auto st = ValidateName("runtime_image", ref); !st.ok()) {
    return Status::InvalidArgument("runtime_image: '" + ref.substr(0, 64) +
                                   "' is neither an image id nor a valid image name");
  }
  return images.GetByName(ref);
}

Status ValidateContainerImage(const ContainerRequest& req, const RuntimeImage& image) {
  if (RuntimeOf(image) == "docker") return ParseImageReference(req.image, "image").status();
  if (req.image.empty()) return Status::Ok();
  return Status::InvalidArgument("image: runtime image '" + image.name +
                                 "' has no container runtime (its runtime check is '" +
                                 image.runtime_check.kind + "', not 'docker'); leave image empty");
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

// working_dir, user and read_only: Docker's meaning; the vm runtime has no container to apply them to.
Status ValidateContainerOptions(const ContainerRequest& req, const RuntimeImage& image) {
  const bool docker = RuntimeOf(image) == "docker";
  if (!req.working_dir.empty()) {
    if (!docker) return Status::InvalidArgument("working_dir: only for a container runtime image (runtime check 'docker')");
    if (req.working_dir[0] != '/' || req.working_dir.size() > 4096 ||
        req.working_dir.find('\0') != std::string::npos) {
      return Status::InvalidArgument("working_dir: must be an absolute path of at most 4096 bytes without NUL");
    }
  }
  if (!req.user.empty()) {
    if (!docker) return Status::InvalidArgument("user: only for a container runtime image (runtime check 'docker')");
    bool ok = req.user.size() <= 256 && req.user.front() != ':' && req.user.back() != ':' &&
              std::count(req.user.begin(), req.user.end(), ':') <= 1;
    for (char c : req.user) {
      ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '.' || c == '-' || c == ':');
    }
    if (!ok) {
      return Status::InvalidArgument("user: '" + req.user.substr(0, 64) +
                                     "' is not user[:group] (names or numeric ids of [A-Za-z0-9_.-])");
    }
  }
  if (req.read_only && !docker) {
    return Status::InvalidArgument("read_only: only for a container runtime image (runtime check 'docker')");
  }
  return Status::Ok();
}

}  // namespace

std::string RuntimeOf(const RuntimeImage& image) {
  return image.runtime_check.kind == "docker" ? "docker" : "vm";
}

Result<RuntimeImage> Validate(const ContainerRequest& req, const std::string& default_runtime_image,
                              const ImageRegistry& images) {
  if (!req.id.empty()) {
    if (auto p = Id::Parse("id", req.id); !p.ok()) return p.status();
  }
  if (!req.name.empty()) {
    if (auto st = ValidateName("name", req.name); !st.ok()) return st;
  }
  auto image = ResolveImage(req.runtime_image, default_runtime_image, images);
  if (!image.ok()) return image;
  if (auto st = ValidateContainerImage(req, *image); !st.ok()) return st;
  if (auto st = ValidateCommandAndEnv(req); !st.ok()) return st;
  if (auto st = ValidateContainerOptions(req, *image); !st.ok()) return st;
  if (req.wait_for_creating &&
      (req.wait_for_creating->count() < 0 || *req.wait_for_creating > std::chrono::hours(1))) {
    return Status::InvalidArgument("wait_for_creating: must be between 0 and 3600000 ms");
  }
  return image;
}

}  // namespace fcwarm::internal
