/// \file
/// \brief Error values used at every public boundary: Status and Result<T>.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace fcwarm {

/// \brief Error categories. StatusTable() maps each to its name, HTTP status, Python exception and CLI exit code.
enum class StatusCode {
  kOk = 0,                  ///< Success.
  kInvalidArgument = 1,     ///< Caller input is malformed (HTTP 400, Python ValueError).
  kNotFound = 2,            ///< The named object does not exist (HTTP 404, Python LookupError).
  kAlreadyExists = 3,       ///< The object exists already (HTTP 409).
  kFailedPrecondition = 4,  ///< The system is not in a state that allows the call (HTTP 409).
  kResourceExhausted = 5,   ///< A configured limit was reached (HTTP 429).
  kUnavailable = 6,         ///< A dependency (VMM, guest, disk) failed or is not reachable (HTTP 503).
  kDeadlineExceeded = 7,    ///< A deadline passed before the operation finished (HTTP 504).
  kInternal = 8,            ///< A bug or an unexpected failure (HTTP 500).
  kDataLoss = 9,            ///< A peer (a guest agent) broke its protocol and is not trusted again (HTTP 502).
};

/// \brief How every adapter renders one StatusCode: the single source for REST, Python and the CLI.
struct StatusCodeInfo {
  StatusCode code;                    ///< The code.
  std::string_view name;              ///< Stable lower-case name used in JSON errors, e.g. "not_found".
  int http_status;                    ///< HTTP status of a REST error response.
  std::string_view python_exception;  ///< Class in `fcwarm.errors` the Python package raises ("" for kOk).
  int cli_exit_code;                  ///< Exit code of the `fcwarm` command-line tool.
};


/// \brief The outcome of an operation: a code and a human-readable message naming what was wrong.
///
/// Thread safety: a Status is a value; distinct objects may be used from different threads.
class [[nodiscard]] Status {
 public:
  /// \brief Constructs success.
  Status() = default;
  /// \brief Constructs a status with a code and message.
  /// \param code The error category.
  /// \param message What went wrong, naming the field or object concerned.
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  /// \brief Success.
  static Status Ok() { return Status(); }
  /// \brief InvalidArgument with a message.
  static Status InvalidArgument(std::string msg) { return {StatusCode::kInvalidArgument, std::move(msg)}; }
  /// \brief NotFound with a message.
  static Status NotFound(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
  /// \brief AlreadyExists with a message.
  static Status AlreadyExists(std::string msg) { return {StatusCode::kAlreadyExists, std::move(msg)}; }
  /// \brief FailedPrecondition with a message.
  static Status FailedPrecondition(std::string msg) {
    return {StatusCode::kFailedPrecondition, std::move(msg)};
  }
  /// \brief ResourceExhausted with a message.
  static Status ResourceExhausted(std::string msg) {
    return {StatusCode::kResourceExhausted, std::move(msg)};
  }
  /// \brief Unavailable with a message.
  static Status Unavailable(std::string msg) { return {StatusCode::kUnavailable, std::move(msg)}; }
  /// \brief DeadlineExceeded with a message.
  static Status DeadlineExceeded(std::string msg) {
    return {StatusCode::kDeadlineExceeded, std::move(msg)};
  }
  /// \brief Internal with a message.
  static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }
  /// \brief DataLoss with a message.
  static Status DataLoss(std::string msg) { return {StatusCode::kDataLoss, std::move(msg)}; }

  /// \brief True on success.
  bool ok() const { return code_ == StatusCode::kOk; }
  /// \brief The code.
  StatusCode code() const { return code_; }
  /// \brief The message (empty on success).
  const std::string& message() const { return message_; }
  /// \brief "code: message", or "ok".
  std::string ToString() const;
  /// \brief A copy whose message is prefixed with context ("context: message").
  /// \param context Text describing the operation that failed.
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// \brief Either a value or a non-ok Status.
///
/// Thread safety: a value type; as safe as T.
template <typename T>
class [[nodiscard]] Result {
 public:
  /// \brief Holds a value.
  Result(T value) : data_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  /// \brief Holds an error; `status` must not be ok.
  /// \param status The error.
  Result(Status status) : data_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(data_).ok());
  }

  /// \brief True when a value is held.
  bool ok() const { return std::holds_alternative<T>(data_); }
  /// \brief The error, or an ok Status when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(data_); }
  /// \brief The value; must only be called when ok().
  T& value() & { return std::get<T>(data_); }
  /// \brief The value; must only be called when ok().
  const T& value() const& { return std::get<T>(data_); }
  /// \brief Moves the value out; must only be called when ok().
  T&& value() && { return std::get<T>(std::move(data_)); }
  /// \brief Pointer-like access to the value.
  T* operator->() { return &value(); }
  /// \brief Pointer-like access to the value.
  const T* operator->() const { return &value(); }
  /// \brief Dereference to the value.
  T& operator*() & { return value(); }
  /// \brief Dereference to the value.
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> data_;
};

/// \brief The whole table, one row per StatusCode in enum order.
const std::vector<StatusCodeInfo>& StatusTable();
/// \brief The row of one code.
const StatusCodeInfo& StatusInfo(StatusCode code);
/// \brief Stable lower-case name of a code, e.g. "not_found" (StatusInfo(code).name).
std::string_view StatusCodeName(StatusCode code);
/// \brief The code with a given name.
/// \return The code; InvalidArgument for an unknown name.
Result<StatusCode> ParseStatusCode(std::string_view name);

}  // namespace fcwarm
