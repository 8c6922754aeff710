// The small HTTP/1.0 client pieces used by the `docker` op and the docker readiness check: request building
// and response-head parsing. The socket I/O is LinuxSystemOps::UnixHttp (linux_system_ops.cpp).
#include <string>
#include <string_view>

#include "agent_core.hpp"

namespace fcwarm::agent {
namespace {

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (Lower(a[i]) != Lower(b[i])) return false;
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Replaces non-printable bytes so an error message quoting the peer stays readable.
std::string Quote(std::string_view s, std::size_t max = 80) {
  std::string out = "\"";
  for (char c : s.substr(0, max)) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  if (s.size() > max) out += "...";
  return out + "\"";
}

}  // namespace

std::optional<std::string> HttpResponse::Header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (EqualsIgnoreCase(k, name)) return v;
  return std::nullopt;
}

bool ValidHttpMethod(std::string_view method) {
  return method == "GET" || method == "POST" || method == "PUT" || method == "DELETE" || method == "HEAD";
}

bool ValidHttpTarget(std::string_view target) {
  if (target.empty() || target[0] != '/' || target.size() > kMaxHttpTargetBytes) return false;
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '#') return false;
  }
  return true;
}

std::string BuildHttpRequest(std::string_view method, std::string_view target,
                             const std::optional<std::string>& body) {
  std::string r;
  r.reserve(128 + target.size() + (body ? body->size() : 0));
  r.append(method).append(" ").append(target).append(" HTTP/1.0\r\nHost: docker\r\n");
  if (body) {
    r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body->size()) + "\r\n";
  } else if (method == "POST" || method == "PUT") {
    r += "Content-Length: 0\r\n";
  }
  r += "\r\n";
  if (body) r += *body;
  return r;
}

std::string ParseHttpHead(std::string_view head, HttpResponse& out) {
  auto eol = head.find("\r\n");
  std::string_view status_line = head.substr(0, eol);
  // "HTTP/1.x SSS[ reason]"
  bool ok = status_line.size() >= 12 && status_line.substr(0, 5) == "HTTP/" && status_line[8] == ' ' &&
            (status_line.size() == 12 || status_line[12] == ' ');
  int status = 0;
  for (std::size_t i = 9; ok && i < 12; ++i) {
    if (status_line[i] < '0' || status_line[i] > '9') ok = false;
    status = status * 10 + (status_line[i] - '0');
  }
  if (!ok || status < 100) return "unparsable status line " + Quote(status_line);
  out.status = status;
  out.status_line = std::string(status_line);
  out.headers.clear();
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (!rest.empty()) {
    auto e = rest.find("\r\n");
    std::string_view line = rest.substr(0, e);
    rest = e == std::string_view::npos ? std::string_view() : rest.substr(e + 2);
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return "unparsable header line " + Quote(line);
    out.headers.emplace_back(std::string(line.substr(0, colon)), std::string(Trim(line.substr(colon + 1))));
  }
  return "";
}

}  // namespace fcwarm::agent
