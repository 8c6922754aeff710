/// \file
/// \brief Validated identifiers (UUID version 4 text) and validated names.
#pragma once

#include <string>
#include <string_view>

#include "fcwarm/status.hpp"

namespace fcwarm {

/// \brief A validated object id: lower-case UUID version 4 text, e.g. `0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e11`.
///
/// The validation rejects everything else (path separators, `..`, NUL, upper case, other UUID versions), so
/// an Id can be used safely as a directory name.
///
/// Thread safety: a value type.
class Id {
 public:
  /// \brief Parses and validates text.
  /// \param field Name of the field the text came from; it appears in the error message.
  /// \param text The candidate id.
  /// \return The Id, or InvalidArgument naming `field`.
  static Result<Id> Parse(std::string_view field, std::string_view text);
  /// \brief Generates a fresh random version 4 UUID.
  static Id Generate();
  /// \brief True when `text` is a valid id.
  /// \param text The candidate id.
  static bool IsValid(std::string_view text);

  /// \brief The canonical text.
  const std::string& str() const { return text_; }
  /// \brief Equality on the text.
  friend bool operator==(const Id&, const Id&) = default;
  /// \brief Ordering on the text.
  friend auto operator<=>(const Id&, const Id&) = default;

 private:
  explicit Id(std::string text) : text_(std::move(text)) {}
  std::string text_;
};

/// \brief Validates a user-chosen name: 1-63 characters of `[a-z0-9._-]`, starting with a letter or digit,
/// no `..`.
/// \param field The field the name came from (appears in the error message).
/// \param name The candidate.
/// \return Ok, or InvalidArgument naming the field and the rule broken.
Status ValidateName(std::string_view field, std::string_view name);

}  // namespace fcwarm
