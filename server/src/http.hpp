// HTTP request/response values shared by the parser, the router, the API handlers and the connection code.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fcwarm::server {

/// One parsed HTTP/1.x request. Header names are lower-cased; values are as received (trimmed).
struct HttpRequest {
  std::string method;  ///< "GET", "POST", ...
  std::string target;  ///< The raw request target ("/v1/images?x=1").
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  int http_major = 1;
  int http_minor = 1;
  bool keep_alive = true;  ///< What the client asked for (http_should_keep_alive).
  std::string request_id;  ///< Assigned by the connection before dispatch.
  std::string peer;        ///< "ip:port" of the client, for logs.

  /// First header value with this (lower-case) name, or nullptr.
  const std::string* Header(std::string_view lower_name) const;
};

/// A response. The connection adds Content-Length, Connection, Date-less framing and X-Request-Id.
struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  ///< Extra headers.
  bool close = false;                                        ///< Close the connection after this response.
  std::string error_code;  ///< For logs: the JSON error code, when this is an error.
};

/// Standard reason phrase of a status code ("Not Found"); "Unknown" for codes it does not know.
std::string_view ReasonPhrase(int status);

/// Serialises a response. `keep_alive` selects the Connection header; `head` omits the body.
std::string SerializeResponse(const HttpResponse& response, bool keep_alive, std::string_view request_id,
                              bool head = false);

/// A JSON error response: {"error": {"code": code, "message": message}}.
HttpResponse ErrorResponse(int status, std::string_view code, std::string_view message);

/// Lower-cases ASCII.
std::string ToLowerAscii(std::string_view s);

}  // namespace fcwarm::server
