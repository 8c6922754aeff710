// JSON codec of the REST API: records → JSON, request bodies → validated values (strict: unknown fields,
// wrong types and malformed JSON are InvalidArgument naming the field).
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::server {

/// HTTP status of a library error code (the library's StatusTable()).
int HttpStatusFor(StatusCode code);
/// HTTP status of a library error: HttpStatusFor(its code), except 507 Insufficient Storage for a
/// resource_exhausted error about a full file system (its message carries the OS's or SQLite's words for it:
/// "No space left on device", "Disk quota exceeded", "database or disk is full"; docs/api.md).
int HttpStatusOf(const Status& status);

boost::json::object SnapshotToJson(const RuntimeSnapshot& s);
boost::json::object ImageToJson(const RuntimeImage& i);
boost::json::object EventToJson(const Event& e);
boost::json::object TimingsToJson(const Timings& t);
/// A time that may be unset: its RFC 3339 text (FormatRfc3339), or null.
boost::json::value TimeOrNull(const std::optional<int64_t>& unix_ms);

/// Parses a request body that must be one JSON object (at most 32 levels deep).
/// \return The object, or InvalidArgument naming "body".
Result<boost::json::object> ParseBodyObject(std::string_view body);

/// Reads fields of a JSON object with type checks and remembers which were read, so Finish() can reject
/// unknown ones. The first error wins; later calls are no-ops. `prefix` is prepended to field names in
/// messages ("runtime_check." → "runtime_check.kind: must be a string"). A JSON null counts as absent.
class ObjectReader {
 public:
  ObjectReader(const boost::json::object& object, std::string prefix = "");

  void RequiredString(std::string_view key, std::string* out);
  void OptionalString(std::string_view key, std::string* out);
  /// An integer in [min, max].
  void OptionalUint32(std::string_view key, uint32_t* out, uint32_t min, uint32_t max);
  void OptionalBool(std::string_view key, bool* out);
  /// An array of strings (at most `max_items`).
  void OptionalStringArray(std::string_view key, std::vector<std::string>* out, size_t max_items);
  /// An object whose values are strings (at most `max_items`).
  void OptionalStringMap(std::string_view key, std::map<std::string, std::string>* out, size_t max_items);
  /// A nested object, or nullptr when absent; marks the key as read.
  const boost::json::object* OptionalObject(std::string_view key);
  /// Records an error coming from nested reading.
  void SetError(Status status);
  /// Ok, the first type error, or InvalidArgument naming the first unknown field.
  Status Finish();

 private:
  const boost::json::value* Take(std::string_view key);
  std::string Name(std::string_view key) const { return prefix_ + std::string(key); }
  const boost::json::object& object_;
  std::string prefix_;
  std::set<std::string, std::less<>> read_;
  Status status_;
};

/// Renders a JSON value followed by a newline.
std::string Serialize(const boost::json::value& v);

}  // namespace fcwarm::server
