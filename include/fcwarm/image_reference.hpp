/// \file
/// \brief Container image references in Docker's grammar: `nginx:alpine`, `registry.local:5000/team/app:1.2`,
/// `busybox@sha256:<64 hex>`.
#pragma once

#include <string>
#include <string_view>

#include "fcwarm/status.hpp"

namespace fcwarm {

/// \brief A parsed container image reference: `[domain/]path[:tag][@digest]`.
struct ImageReference {
  std::string domain;  ///< Registry `host[:port]`, or empty for Docker Hub.
  std::string path;    ///< Repository path, lower case: "nginx", "team/app".
  std::string tag;     ///< Tag, or empty.
  std::string digest;  ///< "sha256:<64 hex>" (or sha384/sha512), or empty.

  /// \brief The reference as given, in canonical spelling (no defaults added).
  std::string str() const;
  /// \brief Fully qualified, as Docker resolves it: "nginx:alpine" is "docker.io/library/nginx:alpine", a
  /// reference with neither tag nor digest gets the tag "latest".
  std::string Normalized() const;
};

/// \brief Parses an image reference in Docker's grammar (distribution/reference): lower-case path components
/// separated by `/` whose parts are joined by `.`, `_`, `__` or dashes; an optional registry domain (the first
/// component when it contains `.` or `:`, or is `localhost`); a tag of at most 128 characters
/// `[A-Za-z0-9_][A-Za-z0-9_.-]*`; a digest whose length fits its algorithm. The name is at most 255 characters.
/// IPv6 registry addresses are not accepted.
/// \param text The reference.
/// \param field The request field it came from, used in error messages ("image", "preload_images[2]", ...).
/// \return The reference; InvalidArgument naming the field and what is wrong (empty, too long, upper case,
/// `..`, a bad tag, a digest of the wrong length, ...).
Result<ImageReference> ParseImageReference(std::string_view text, std::string_view field = "image");

}  // namespace fcwarm
