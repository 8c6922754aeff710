#include "request_parser.hpp"

#include <climits>
#include <cstring>

namespace fcwarm::server {

namespace {
std::string Trim(std::string s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}
}  // namespace

RequestParser::RequestParser(ParserLimits limits) : limits_(limits) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  http_parser_settings_init(&settings_);
  settings_.on_message_begin = &OnMessageBegin;
  settings_.on_url = &OnUrl;
  settings_.on_header_field = &OnHeaderField;
  settings_.on_header_value = &OnHeaderValue;
  settings_.on_headers_complete = &OnHeadersComplete;
  settings_.on_body = &OnBody;
  settings_.on_message_complete = &OnMessageComplete;
}

int RequestParser::Fail(int status, std::string code, std::string message) {
  if (error_status_ == 0) {
    error_status_ = status;
    error_code_ = std::move(code);
    error_message_ = std::move(message);
  }
  return -1;
}

void RequestParser::SetErrorFromParser() {
  if (error_status_ != 0) return;
  auto err = HTTP_PARSER_ERRNO(&parser_);
  if (err == HPE_HEADER_OVERFLOW) {
    Fail(431, "request_header_fields_too_large", "the request headers are too large");
    return;
  }
  if (err == HPE_INVALID_VERSION) {
    Fail(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported");
    return;
  }
  if (err == HPE_INVALID_METHOD) {
    Fail(501, "not_implemented", "unknown request method");
    return;
  }
  Fail(400, "invalid_argument", std::string("malformed HTTP request: ") + http_errno_description(err));
}

bool RequestParser::Feed(const char* data, size_t len, std::deque<HttpRequest>& out) {
  if (failed()) return false;
  if (len == 0) return true;
  out_ = &out;
  size_t n = http_parser_execute(&parser_, &settings_, data, len);
  out_ = nullptr;
  if (failed()) return false;
  if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK) {
    SetErrorFromParser();
    return false;
  }
  if (parser_.upgrade) {
    Fail(501, "not_implemented", "protocol upgrades are not supported");
    return false;
  }
  if (n != len) {
    SetErrorFromParser();
    return false;
  }
  return true;
}

bool RequestParser::FeedEof(std::deque<HttpRequest>& out) {
  if (failed()) return false;
  out_ = &out;
  http_parser_execute(&parser_, &settings_, nullptr, 0);
  out_ = nullptr;
  if (failed()) return false;
  if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK || in_progress_) {
    Fail(400, "invalid_argument", "the connection closed in the middle of a request");
    return false;
  }
  return true;
}

int RequestParser::OnMessageBegin(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->current_ = HttpRequest{};
  self->field_.clear();
  self->value_.clear();
  self->last_was_value_ = false;
  self->header_bytes_ = 0;
  self->in_progress_ = true;
  ++self->started_;
  return 0;
}

int RequestParser::AppendLimited(std::string* dst, const char* at, size_t len, size_t limit, int status,
                                 const char* code, const char* what) {
  if (dst->size() + len > limit) return Fail(status, code, std::string(what) + std::to_string(limit) + " bytes");
  dst->append(at, len);
  return 0;
}

int RequestParser::OnUrl(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  return self->AppendLimited(&self->current_.target, at, len, self->limits_.max_url_bytes, 414, "uri_too_long",
                             "the request target is longer than ");
}

void RequestParser::FinishHeader() {
  if (!field_.empty() || !value_.empty()) {
    current_.headers.emplace_back(ToLowerAscii(field_), Trim(std::move(value_)));
  }
  field_.clear();
  value_.clear();
}

int RequestParser::CountHeaderBytes(size_t len) {
  header_bytes_ += len;
  if (header_bytes_ <= limits_.max_header_bytes) return 0;
  return Fail(431, "request_header_fields_too_large",
              "the request headers are larger than " + std::to_string(limits_.max_header_bytes) + " bytes");
}

int RequestParser::OnHeaderField(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  if (int rc = self->CountHeaderBytes(len); rc != 0) return rc;
  if (self->last_was_value_) {
    self->FinishHeader();
    self->last_was_value_ = false;
  }
  if (self->field_.empty() && self->current_.headers.size() >= self->limits_.max_headers) {
    return self->Fail(431, "request_header_fields_too_large",
                      "more than " + std::to_string(self->limits_.max_headers) + " request headers");
  }
  self->field_.append(at, len);
  return 0;
}

int RequestParser::OnHeaderValue(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  if (int rc = self->CountHeaderBytes(len); rc != 0) return rc;
  self->value_.append(at, len);
  self->last_was_value_ = true;
  return 0;
}

int RequestParser::OnHeadersComplete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->FinishHeader();
  self->last_was_value_ = false;
  auto& r = self->current_;
  r.method = http_method_str(static_cast<http_method>(p->method));
  r.http_major = p->http_major;
  r.http_minor = p->http_minor;
  if (r.http_major != 1 || r.http_minor > 1) {
    return self->Fail(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported");
  }
  if ((p->flags & F_CONTENTLENGTH) && p->content_length != ULLONG_MAX &&
      p->content_length > self->limits_.max_body_bytes) {
    return self->Fail(
        413, "payload_too_large",
        "the request body is larger than " + std::to_string(self->limits_.max_body_bytes) + " bytes");
  }
  if (const auto* expect = r.Header("expect")) {
    if (ToLowerAscii(*expect) == "100-continue") {
      if (self->on_expect_continue) self->on_expect_continue();
    } else {
      return self->Fail(417, "expectation_failed", "unsupported Expect header");
    }
  }
  return 0;
}

int RequestParser::OnBody(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  return self->AppendLimited(&self->current_.body, at, len, self->limits_.max_body_bytes, 413, "payload_too_large",
                             "the request body is larger than ");
}

int RequestParser::OnMessageComplete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->current_.keep_alive = http_should_keep_alive(p) != 0;
  self->in_progress_ = false;
  if (self->out_) self->out_->push_back(std::move(self->current_));
  self->current_ = HttpRequest{};
  return 0;
}

}  // namespace fcwarm::server
