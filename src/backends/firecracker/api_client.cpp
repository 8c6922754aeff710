#include "backends/firecracker/api_client.hpp"

#include <curl/curl.h>

#include <boost/json.hpp>
#include <memory>
#include <mutex>

namespace fcwarm::firecracker {
namespace {

constexpr size_t kMaxBody = 1u << 20;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t OnData(char* data, size_t size, size_t nmemb, void* user) {
  auto* out = static_cast<std::string*>(user);
  size_t n = size * nmemb;
  if (out->size() + n > kMaxBody) return 0;  // abort: the API never answers this much
  out->append(data, n);
  return n;
}

struct EasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct ListDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

}  // namespace

std::string FaultMessage(const std::string& body) {
  boost::system::error_code ec;
  auto v = boost::json::parse(body, ec);
  if (!ec && v.is_object()) {
    if (const auto* f = v.as_object().if_contains("fault_message"); f && f->is_string()) {
      return std::string(f->as_string());
    }
  }
  std::string s = body.substr(0, 300);
  return s.empty() ? "(empty body)" : s;
}

Result<ApiResponse> ApiClient::Call(const std::string& method, const std::string& path,
                                    const std::string& body, std::chrono::milliseconds timeout) const {
  GlobalInit();
  const std::string what = method + " " + path;
  std::unique_ptr<CURL, EasyDeleter> curl(curl_easy_init());
  if (!curl) return Status::Internal(what + ": curl_easy_init failed");
  CURL* c = curl.get();
  std::string url = "http://localhost" + path;
  std::string response;
  char errbuf[CURL_ERROR_SIZE] = {0};
  std::unique_ptr<curl_slist, ListDeleter> headers;
  auto add_header = [&](const char* h) { headers.reset(curl_slist_append(headers.release(), h)); };
  add_header("Accept: application/json");
  add_header("Expect:");
  long ms = std::max<long>(1, static_cast<long>(timeout.count()));
  curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, socket_path_.c_str());
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, ms);
  curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &OnData);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response);
  if (method == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    add_header("Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());

  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK) {
    std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    switch (rc) {
      case CURLE_OPERATION_TIMEDOUT:
        return Status::DeadlineExceeded(what + ": no answer from the Firecracker API within " +
                                        std::to_string(timeout.count()) + " ms");
      case CURLE_COULDNT_CONNECT:
        return Status::Unavailable(what + ": cannot connect to the Firecracker API socket " + socket_path_ +
                                   ": " + detail);
      case CURLE_GOT_NOTHING:
      case CURLE_RECV_ERROR:
      case CURLE_SEND_ERROR:
      case CURLE_PARTIAL_FILE:
        return Status::Unavailable(what + ": the Firecracker API connection closed without an answer (" +
                                   detail + ")");
      default:
        return Status::Unavailable(what + ": " + detail);
    }
  }
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  if (code >= 200 && code < 300) return ApiResponse{code, std::move(response)};
  std::string msg =
      what + ": Firecracker answered HTTP " + std::to_string(code) + ": " + FaultMessage(response);
  if (code >= 400 && code < 500) return Status::FailedPrecondition(std::move(msg));
  return Status::Unavailable(std::move(msg));
}

}  // namespace fcwarm::firecracker
