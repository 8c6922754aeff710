#include "coord/etcd_client.hpp"

#include <curl/curl.h>

#include <boost/json.hpp>
#include <charconv>
#include <cstdint>
#include <mutex>

#include "util/base64.hpp"

namespace fcwarm::coord {
// The gateway carries keys and values as padded base64.
using util::Base64Decode;
using util::Base64Encode;
namespace {

namespace json = boost::json;

constexpr size_t kMaxBody = 4u << 20;  // a lock's range answer is tiny; this only bounds a broken server

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t OnData(char* data, size_t size, size_t nmemb, void* user) {
  auto* out = static_cast<std::string*>(user);
  size_t n = size * nmemb;
  if (out->size() + n > kMaxBody) return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
  out->append(data, n);
  return n;
}

// The gRPC status codes the gateway returns in `code`, as Status codes.
StatusCode FromGrpcCode(int64_t code) {
  switch (code) {
    case 3:   // INVALID_ARGUMENT
    case 11:  // OUT_OF_RANGE
      return StatusCode::kInvalidArgument;
    case 4:  // DEADLINE_EXCEEDED
      return StatusCode::kDeadlineExceeded;
    case 5:  // NOT_FOUND
      return StatusCode::kNotFound;
    case 6:  // ALREADY_EXISTS
      return StatusCode::kAlreadyExists;
    case 7:   // PERMISSION_DENIED
    case 9:   // FAILED_PRECONDITION
    case 12:  // UNIMPLEMENTED
    case 16:  // UNAUTHENTICATED
      return StatusCode::kFailedPrecondition;
    case 8:  // RESOURCE_EXHAUSTED
      return StatusCode::kResourceExhausted;
    case 1:   // CANCELLED
    case 10:  // ABORTED
    case 14:  // UNAVAILABLE
      return StatusCode::kUnavailable;
    default:  // UNKNOWN, INTERNAL, DATA_LOSS, ...
      return StatusCode::kInternal;
  }
}

// An int64 field the gateway writes as a decimal string (or, leniently, a number); absent is 0.
Result<int64_t> Int64Field(const json::object& o, std::string_view name, std::string_view what) {
  const json::value* v = o.if_contains(name);
  if (v == nullptr || v->is_null()) return int64_t{0};
  if (v->is_int64()) return v->as_int64();
  if (v->is_uint64() && v->as_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v->as_uint64());
  }
  if (v->is_string()) {
    const json::string& s = v->as_string();
    int64_t out = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec == std::errc() && ptr == s.data() + s.size() && !s.empty()) return out;
  }
  return Status::Internal(std::string(what) + ": field '" + std::string(name) + "' is not an integer");
}

Result<json::object> ParseObject(const std::string& text, std::string_view what) {
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) {
    return Status::Internal(std::string(what) + ": the answer is not a JSON object: " + text.substr(0, 200));
  }
  return std::move(v.as_object());
}

Result<KeyValue> DecodeKeyValue(const json::value& v, std::string_view what) {
  if (!v.is_object()) return Status::Internal(std::string(what) + ": a key-value is not an object");
  const json::object& o = v.as_object();
  KeyValue kv;
  for (auto [field, out] : {std::pair{"key", &kv.key}, std::pair{"value", &kv.value}}) {
    const json::value* f = o.if_contains(field);
    if (f == nullptr) continue;  // the gateway omits empty fields
    if (!f->is_string()) return Status::Internal(std::string(what) + ": '" + field + "' is not a string");
    auto decoded = Base64Decode(f->as_string());
    if (!decoded) return Status::Internal(std::string(what) + ": '" + field + "' is not base64");
    *out = std::move(*decoded);
  }
  for (auto [field, out] :
       {std::pair{"create_revision", &kv.create_revision}, std::pair{"mod_revision", &kv.mod_revision},
        std::pair{"version", &kv.version}, std::pair{"lease", &kv.lease}}) {
    auto n = Int64Field(o, field, what);
    if (!n.ok()) return n.status();
    *out = *n;
  }
  return kv;
}

// The first key of a RangeResponse object, or nullopt.
Result<std::optional<KeyValue>> FirstKv(const json::object& range, std::string_view what) {
  const json::value* kvs = range.if_contains("kvs");
  if (kvs == nullptr || kvs->is_null()) return std::optional<KeyValue>();
  if (!kvs->is_array()) return Status::Internal(std::string(what) + ": 'kvs' is not an array");
  if (kvs->as_array().empty()) return std::optional<KeyValue>();
  auto kv = DecodeKeyValue(kvs->as_array().front(), what);
  if (!kv.ok()) return kv.status();
  return std::optional<KeyValue>(std::move(kv).value());
}

int64_t HeaderRevision(const json::object& o) {
  const json::value* h = o.if_contains("header");
  if (h == nullptr || !h->is_object()) return 0;
  auto r = Int64Field(h->as_object(), "revision", "header");
  return r.ok() ? *r : 0;
}

std::string Serialize(const json::object& o) { return json::serialize(o); }

}  // namespace


// ---- EtcdClient ----

Result<std::unique_ptr<EtcdClient>> EtcdClient::Create(std::vector<EtcdEndpoint> endpoints,
                                                       EtcdClientOptions options) {
  if (endpoints.empty()) return Status::InvalidArgument("etcd client: no endpoint given");
  if (options.connect_timeout.count() <= 0) {
    return Status::InvalidArgument("etcd client: connect_timeout must be positive");
  }
  if (options.request_timeout.count() <= 0) {
    return Status::InvalidArgument("etcd client: request_timeout must be positive");
  }
  GlobalInit();
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(endpoints), options));
}

EtcdClient::EtcdClient(std::vector<EtcdEndpoint> endpoints, EtcdClientOptions options)
    : endpoints_(std::move(endpoints)), options_(options) {}

EtcdClient::~EtcdClient() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* EtcdClient::TakeHandle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      curl_easy_reset(static_cast<CURL*>(h));  // keeps the handle's open connections
      return h;
    }
  }
  return curl_easy_init();
}

void EtcdClient::ReturnHandle(void* curl) {
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() < 8) {
    idle_.push_back(curl);
    return;
  }
  curl_easy_cleanup(static_cast<CURL*>(curl));
}

Result<std::string> EtcdClient::CallOne(void* handle, const EtcdEndpoint& ep, const std::string& path,
                                        const std::string& body, bool* connect_failed) {
  *connect_failed = false;
  CURL* c = static_cast<CURL*>(handle);
  const std::string url = ep.BaseUrl() + path;
  const std::string what = "etcd " + path + " at " + ep.HostPort();
  std::string response;
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROXY, "");  // never through an http_proxy from the environment
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connect_timeout.count()));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(options_.request_timeout.count()));
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &OnData);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  CURLcode rc = curl_easy_perform(c);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    // Nothing was sent when the transfer never reached its start (no connection): safe to try elsewhere.
    curl_off_t pretransfer_us = 0;
    curl_easy_getinfo(c, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us);
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
        (rc == CURLE_OPERATION_TIMEDOUT && pretransfer_us == 0)) {
      *connect_failed = true;
      return Status::Unavailable(ep.HostPort() + ": " + detail);
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) {
      return Status::Unavailable(what + ": no answer within " +
                                 std::to_string(options_.request_timeout.count()) + " ms");
    }
    if (rc == CURLE_WRITE_ERROR) {
      return Status::Internal(what + ": the answer exceeds " + std::to_string(kMaxBody) + " bytes");
    }
    return Status::Unavailable(what + ": " + detail);
  }
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  if (code == 200) return response;
  // The gateway's error body: {"error": "...", "message": "...", "code": <gRPC code>}.
  json::error_code ec;
  json::value v = json::parse(response, ec);
  if (!ec && v.is_object()) {
    const json::object& o = v.as_object();
    const json::value* msg = o.if_contains("message");
    auto grpc = Int64Field(o, "code", what);
    if (msg != nullptr && msg->is_string() && grpc.ok()) {
      return Status(FromGrpcCode(*grpc), what + ": " + std::string(msg->as_string()));
    }
  }
  std::string text = response.substr(0, 200);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return Status::Unavailable(what + ": HTTP " + std::to_string(code) + ": " +
                             (text.empty() ? "(empty)" : text) + " (is this an etcd v3.4+ client URL?)");
}

Result<std::string> EtcdClient::Call(const std::string& path, const std::string& body, bool idempotent) {
  void* handle = TakeHandle();
  if (handle == nullptr) return Status::Internal("etcd " + path + ": curl_easy_init failed");
  const size_t n = endpoints_.size();
  const size_t first = preferred_.load(std::memory_order_relaxed) % n;
  std::string unreachable;  // "host:port: why" of each endpoint that could not be connected to
  Status last;
  for (size_t i = 0; i < n; ++i) {
    size_t index = (first + i) % n;
    bool connect_failed = false;
    auto r = CallOne(handle, endpoints_[index], path, body, &connect_failed);
    if (r.ok() || (!connect_failed && r.status().code() != StatusCode::kUnavailable)) {
      // An answer (good or an error the server reported): this endpoint works.
      preferred_.store(index, std::memory_order_relaxed);
      ReturnHandle(handle);
      return r;
    }
    if (connect_failed) {
      unreachable += (unreachable.empty() ? "" : "; ") + r.status().message();
      continue;
    }
    last = r.status();
    // Reached a server but got no (complete) answer: only a harmless request is repeated elsewhere.
    if (!idempotent) break;
  }
  ReturnHandle(handle);
  if (last.ok()) return Status::Unavailable("etcd unreachable: " + unreachable);
  if (!unreachable.empty())
    return Status::Unavailable(last.message() + " (unreachable: " + unreachable + ")");
  return last;
}

Result<Lease> EtcdClient::GrantLease(int64_t ttl_s) {
  if (ttl_s <= 0)
    return Status::InvalidArgument("etcd lease: TTL must be positive, got " + std::to_string(ttl_s));
  json::object req{{"TTL", std::to_string(ttl_s)}};
  auto r = Call("/v3/lease/grant", Serialize(req), /*idempotent=*/true);  // a spare lease just expires
  if (!r.ok()) return r.status();
  auto o = ParseObject(*r, "etcd lease grant");
  if (!o.ok()) return o.status();
  if (const json::value* e = o->if_contains("error");
      e != nullptr && e->is_string() && !e->as_string().empty()) {
    return Status::Unavailable("etcd lease grant: " + std::string(e->as_string()));
  }
  auto id = Int64Field(*o, "ID", "etcd lease grant");
  if (!id.ok()) return id.status();
  auto ttl = Int64Field(*o, "TTL", "etcd lease grant");
  if (!ttl.ok()) return ttl.status();
  if (*id == 0 || *ttl <= 0) return Status::Internal("etcd lease grant: the answer has no lease ID or TTL");
  return Lease{*id, *ttl};
}

Result<int64_t> EtcdClient::KeepAliveOnce(int64_t lease_id) {
  json::object req{{"ID", std::to_string(lease_id)}};
  auto r = Call("/v3/lease/keepalive", Serialize(req), /*idempotent=*/true);
  if (!r.ok()) return r.status();
  // A streaming call: the gateway answers {"result": {...}} or {"error": {"grpc_code", "message"}}.
  auto o = ParseObject(*r, "etcd lease keepalive");
  if (!o.ok()) return o.status();
  if (const json::value* e = o->if_contains("error"); e != nullptr && e->is_object()) {
    const json::object& eo = e->as_object();
    auto grpc = Int64Field(eo, "grpc_code", "etcd lease keepalive");
    const json::value* msg = eo.if_contains("message");
    std::string text = msg != nullptr && msg->is_string() ? std::string(msg->as_string()) : "error";
    return Status(FromGrpcCode(grpc.ok() ? *grpc : 2), "etcd lease keepalive: " + text);
  }
  const json::value* res = o->if_contains("result");
  if (res == nullptr || !res->is_object()) {
    return Status::Internal("etcd lease keepalive: the answer has no 'result' object");
  }
  auto ttl = Int64Field(res->as_object(), "TTL", "etcd lease keepalive");
  if (!ttl.ok()) return ttl.status();
  if (*ttl <= 0) {
    return Status::NotFound("etcd lease " + std::to_string(lease_id) + " expired or was revoked");
  }
  return *ttl;
}

Status EtcdClient::RevokeLease(int64_t lease_id) {
  json::object req{{"ID", std::to_string(lease_id)}};
  auto r = Call("/v3/lease/revoke", Serialize(req), /*idempotent=*/true);
  return r.status();
}

Result<std::optional<KeyValue>> EtcdClient::Get(std::string_view key) {
  json::object req{{"key", Base64Encode(key)}};
  auto r = Call("/v3/kv/range", Serialize(req), /*idempotent=*/true);
  if (!r.ok()) return r.status();
  auto o = ParseObject(*r, "etcd range");
  if (!o.ok()) return o.status();
  return FirstKv(*o, "etcd range");
}

Result<int64_t> EtcdClient::Put(std::string_view key, std::string_view value, int64_t lease_id) {
  json::object req{{"key", Base64Encode(key)}, {"value", Base64Encode(value)}};
  if (lease_id != 0) req["lease"] = std::to_string(lease_id);
  auto r = Call("/v3/kv/put", Serialize(req), /*idempotent=*/false);
  if (!r.ok()) return r.status();
  auto o = ParseObject(*r, "etcd put");
  if (!o.ok()) return o.status();
  return HeaderRevision(*o);
}

Result<int64_t> EtcdClient::Delete(std::string_view key) {
  json::object req{{"key", Base64Encode(key)}};
  auto r = Call("/v3/kv/deleterange", Serialize(req), /*idempotent=*/false);
  if (!r.ok()) return r.status();
  auto o = ParseObject(*r, "etcd deleterange");
  if (!o.ok()) return o.status();
  return Int64Field(*o, "deleted", "etcd deleterange");
}

Result<CreateResult> EtcdClient::CreateIfAbsent(std::string_view key, std::string_view value,
                                                int64_t lease_id) {
  const std::string k = Base64Encode(key);
  json::object put{{"key", k}, {"value", Base64Encode(value)}};
  if (lease_id != 0) put["lease"] = std::to_string(lease_id);
  json::object req{
      {"compare", json::array{json::object{{"target", "CREATE"}, {"key", k}, {"create_revision", "0"}}}},
      {"success", json::array{json::object{{"request_put", std::move(put)}}}},
      {"failure", json::array{json::object{{"request_range", json::object{{"key", k}}}}}}};
  auto r = Call("/v3/kv/txn", Serialize(req), /*idempotent=*/false);
  if (!r.ok()) return r.status();
  auto o = ParseObject(*r, "etcd txn");
  if (!o.ok()) return o.status();
  CreateResult out;
  out.revision = HeaderRevision(*o);
  const json::value* ok = o->if_contains("succeeded");
  out.created = ok != nullptr && ok->is_bool() && ok->as_bool();
  if (out.created) return out;
  // failure branch: responses[0].response_range
  const json::value* responses = o->if_contains("responses");
  if (responses != nullptr && responses->is_array() && !responses->as_array().empty()) {
    const json::value& first = responses->as_array().front();
    if (first.is_object()) {
      if (const json::value* range = first.as_object().if_contains("response_range");
          range != nullptr && range->is_object()) {
        auto kv = FirstKv(range->as_object(), "etcd txn");
        if (!kv.ok()) return kv.status();
        out.existing = std::move(kv).value();
      }
    }
  }
  // Absent even though the compare failed: the holder's lease ended between the compare and the read
  // (impossible inside one transaction) or the answer is malformed.
  if (!out.existing) return Status::Internal("etcd txn: the compare failed but the answer holds no key");
  return out;
}

}  // namespace fcwarm::coord
