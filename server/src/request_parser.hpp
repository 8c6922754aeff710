// Incremental HTTP/1.x request parser over Node's http_parser 2.9 (Debian libhttp-parser-dev), with limits.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <deque>
#include <functional>
#include <string>

#include "http.hpp"

namespace fcwarm::server {

/// Size limits enforced while parsing. Exceeding one stops the parser with the matching status.
struct ParserLimits {
  size_t max_url_bytes = 8192;       ///< Request target → 414.
  size_t max_header_bytes = 16384;   ///< Sum of header names and values → 431.
  size_t max_headers = 100;          ///< Number of header lines → 431.
  size_t max_body_bytes = 1u << 20;  ///< Request body → 413.
};

/// Feeds bytes of one connection, yields complete requests in order (pipelining), and reports the first
/// protocol error as an HTTP status (400, 413, 414, 431, 501, 505). After an error it accepts nothing more.
///
/// Thread safety: one parser per connection; not shared.
class RequestParser {
 public:
  explicit RequestParser(ParserLimits limits);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  /// Parses `len` bytes; complete requests are appended to `out`. Returns false once the parser failed.
  bool Feed(const char* data, size_t len, std::deque<HttpRequest>& out);
  /// Signals the end of the input (peer closed its side). Returns false when a request was cut short.
  bool FeedEof(std::deque<HttpRequest>& out);

  bool failed() const { return error_status_ != 0; }
  int error_status() const { return error_status_; }
  const std::string& error_code() const { return error_code_; }
  const std::string& error_message() const { return error_message_; }
  /// True between the first byte of a request and its end.
  bool in_progress() const { return in_progress_; }
  /// Number of requests started so far (for slow-client deadlines).
  size_t started() const { return started_; }
  /// Called from inside Feed() when a request announced `Expect: 100-continue` and its size is acceptable.
  std::function<void()> on_expect_continue;

 private:
  static int OnMessageBegin(http_parser* p);
  static int OnUrl(http_parser* p, const char* at, size_t len);
  static int OnHeaderField(http_parser* p, const char* at, size_t len);
  static int OnHeaderValue(http_parser* p, const char* at, size_t len);
  static int OnHeadersComplete(http_parser* p);
  static int OnBody(http_parser* p, const char* at, size_t len);
  static int OnMessageComplete(http_parser* p);
  int Fail(int status, std::string code, std::string message);
  // Counts `len` more header bytes; 431 once the headers outgrow limits_.max_header_bytes, else 0.
  int CountHeaderBytes(size_t len);
  // Appends a chunk to `dst` unless that would exceed `limit`; then fails with `status`/`code`, naming `what`.
  int AppendLimited(std::string* dst, const char* at, size_t len, size_t limit, int status, const char* code,
                    const char* what);
  void FinishHeader();
  void SetErrorFromParser();

  ParserLimits limits_;
  http_parser parser_;
  http_parser_settings settings_;
  HttpRequest current_;
  std::string field_;
  std::string value_;
  bool last_was_value_ = false;
  size_t header_bytes_ = 0;
  bool in_progress_ = false;
  size_t started_ = 0;
  std::deque<HttpRequest>* out_ = nullptr;
  int error_status_ = 0;
  std::string error_code_;
  std::string error_message_;
};

}  // namespace fcwarm::server
