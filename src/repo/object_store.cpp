#include "repo/object_store.hpp"

#include <curl/curl.h>
#include <expat.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "util/common.hpp"

namespace fcwarm::repo {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kTmpMarker = ".fcwarm-tmp.";

std::string Quote(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// The checks of ValidateKey on one key or prefix, `what` naming it in messages.
Status CheckSegments(std::string_view key, std::string_view what) {
  if (key.empty()) return Status::InvalidArgument(std::string(what) + " is empty");
  if (key.size() > 1024) {
    return Status::InvalidArgument(std::string(what) + " is longer than 1024 bytes (" + std::to_string(key.size()) +
                                   ")");
  }
  for (char c : key) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '\\') {
      return Status::InvalidArgument(std::string(what) + " " + Quote(key) +
                                     " contains a character other than printable ASCII (no space, no '\\')");
    }
  }
  if (key.front() == '/') return Status::InvalidArgument(std::string(what) + " " + Quote(key) + " starts with '/'");
  if (key.back() == '/') return Status::InvalidArgument(std::string(what) + " " + Quote(key) + " ends with '/'");
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    std::string_view seg = key.substr(start, end - start);
    if (seg.empty()) return Status::InvalidArgument(std::string(what) + " " + Quote(key) + " has an empty segment");
    if (seg == "." || seg == "..") {
      return Status::InvalidArgument(std::string(what) + " " + Quote(key) + " has a '" + std::string(seg) +
                                     "' segment");
    }
    start = end + 1;
  }
  if (key.find(kTmpMarker) != std::string_view::npos) {
    return Status::InvalidArgument(std::string(what) + " " + Quote(key) + " contains '" + std::string(kTmpMarker) +
                                   "' (reserved for temporary files)");
  }
  return Status::Ok();
}

// A listing prefix: "" or a key, optionally ending with '/'.
Status ValidatePrefix(std::string_view prefix) {
  if (prefix.empty()) return Status::Ok();
  std::string_view p = prefix;
  if (p.back() == '/') p.remove_suffix(1);
  return CheckSegments(p, "prefix");
}

std::string Hex(const unsigned char* p, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
  return Hex(md, len);
}

// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters as they are, everything else %XX
// (upper-case); '/' kept in paths, encoded in query values.
std::string UriEncode(std::string_view s, bool keep_slash) {
  static const char* kDigits = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kDigits[u >> 4]);
      out.push_back(kDigits[u & 15]);
    }
  }
  return out;
}

// A small XML reader: calls on_end(path, text) at the end of every element, path being the element names from
// the root ("ListBucketResult/Contents/Key") and text the element's own character data.
class XmlReader {
 public:
  using Callback = std::function<void(const std::string& path, const std::string& text)>;
  static Status Parse(std::string_view xml, const Callback& on_end) {
    XmlReader r(on_end);
    XML_Parser p = XML_ParserCreate(nullptr);
    if (p == nullptr) return Status::Internal("XML_ParserCreate failed");
    XML_SetUserData(p, &r);
    XML_SetElementHandler(p, &XmlReader::Start, &XmlReader::End);
    XML_SetCharacterDataHandler(p, &XmlReader::Text);
    Status st;
    if (XML_Parse(p, xml.data(), static_cast<int>(xml.size()), 1) == XML_STATUS_ERROR) {
      st = Status::DataLoss("malformed XML at line " + std::to_string(XML_GetCurrentLineNumber(p)) + ": " +
                            XML_ErrorString(XML_GetErrorCode(p)));
    }
    XML_ParserFree(p);
    return st;
  }

 private:
  explicit XmlReader(const Callback& cb) : cb_(cb) {}
  static void Start(void* ud, const XML_Char* name, const XML_Char** /*attrs*/) {
    auto* r = static_cast<XmlReader*>(ud);
    r->names_.emplace_back(name);
    r->texts_.emplace_back();
  }
  static void End(void* ud, const XML_Char* /*name*/) {
    auto* r = static_cast<XmlReader*>(ud);
    std::string path;
    for (const auto& n : r->names_) path += (path.empty() ? "" : "/") + n;
    r->cb_(path, r->texts_.back());
    r->names_.pop_back();
    r->texts_.pop_back();
  }
  static void Text(void* ud, const XML_Char* s, int len) {
    auto* r = static_cast<XmlReader*>(ud);
    if (!r->texts_.empty()) r->texts_.back().append(s, static_cast<size_t>(len));
  }
  const Callback& cb_;
  std::vector<std::string> names_;
  std::vector<std::string> texts_;
};

// "2024-05-01T12:34:56.789Z" → Unix milliseconds (0 when unreadable).
int64_t ParseIsoTime(const std::string& s) {
  struct tm tm {};
  int ms = 0;
  int n = std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d.%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                      &tm.tm_min, &tm.tm_sec, &ms);
  if (n < 6) return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<int64_t>(timegm(&tm)) * 1000 + (n == 7 ? ms : 0);
}

}  // namespace

Status ValidateKey(std::string_view key) { return CheckSegments(key, "object key"); }

// ---- credentials -----------------------------------------------------------------------------------------

Result<S3Credentials> CredentialsFromEnvironment() {
  S3Credentials c;
  const char* id = std::getenv("AWS_ACCESS_KEY_ID");
  const char* secret = std::getenv("AWS_SECRET_ACCESS_KEY");
  const char* token = std::getenv("AWS_SESSION_TOKEN");
  if (id == nullptr || *id == '\0') return Status::NotFound("AWS_ACCESS_KEY_ID is not set");
  if (secret == nullptr || *secret == '\0') return Status::NotFound("AWS_SECRET_ACCESS_KEY is not set");
  c.access_key_id = id;
  c.secret_access_key = secret;
  if (token != nullptr) c.session_token = token;
  return c;
}

Result<S3Credentials> CredentialsFromFile(const fs::path& path, const std::string& profile) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("credentials file " + path.string() + " cannot be opened");
  S3Credentials c;
  bool in_profile = false, found = false;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    std::string t = Trim(line);
    if (t.empty() || t[0] == '#' || t[0] == ';') continue;
    std::string where = path.string() + ":" + std::to_string(lineno);
    if (t.front() == '[') {
      if (t.back() != ']') return Status::InvalidArgument(where + ": a section header must end with ']'");
      std::string name = Trim(std::string_view(t).substr(1, t.size() - 2));
      if (name.rfind("profile ", 0) == 0) name = Trim(std::string_view(name).substr(8));
      in_profile = name == profile;
      found = found || in_profile;
      continue;
    }
    size_t eq = t.find('=');
    if (eq == std::string::npos) return Status::InvalidArgument(where + ": expected 'key = value'");
    if (!in_profile) continue;
    std::string key = Trim(std::string_view(t).substr(0, eq));
    std::string value = Trim(std::string_view(t).substr(eq + 1));
    if (key == "aws_access_key_id") c.access_key_id = value;
    else if (key == "aws_secret_access_key") c.secret_access_key = value;
    else if (key == "aws_session_token") c.session_token = value;
  }
  if (!found) return Status::NotFound("credentials file " + path.string() + " has no [" + profile + "] section");
  if (c.access_key_id.empty()) {
    return Status::InvalidArgument("credentials file " + path.string() + ": [" + profile +
                                   "] has no aws_access_key_id");
  }
  if (c.secret_access_key.empty()) {
    return Status::InvalidArgument("credentials file " + path.string() + ": [" + profile +
                                   "] has no aws_secret_access_key");
  }
  return c;
}

// ---- S3 --------------------------------------------------------------------------------------------------

struct S3ObjectStore::Impl {
  S3Options o;
  std::string bucket_url;  // ENDPOINT/BUCKET
  std::string sigv4;       // "aws:amz:REGION:s3"
  std::mutex mu;
  std::vector<CURL*> idle;

  struct Reply {
    CURLcode curl = CURLE_OK;  // CURLE_OK when an HTTP reply came
    std::string curl_error;
    long http = 0;
    std::string body;
    uint64_t content_length = 0;
  };

  ~Impl() {
    for (CURL* h : idle) curl_easy_cleanup(h);
  }

  CURL* Acquire() {
    {
      std::lock_guard lock(mu);
      if (!idle.empty()) {
        CURL* h = idle.back();
        idle.pop_back();
        return h;
      }
    }
    return curl_easy_init();
  }
  void Release(CURL* h) {
    curl_easy_reset(h);  // keeps the handle's connections and DNS cache
    std::lock_guard lock(mu);
    if (idle.size() < 32) {
      idle.push_back(h);
      return;
    }
    curl_easy_cleanup(h);
  }

  static size_t Write(char* p, size_t size, size_t n, void* ud) {
    static_cast<std::string*>(ud)->append(p, size * n);
    return size * n;
  }

  std::string Where() const { return "s3://" + o.bucket + " at " + o.endpoint; }

  // One request. `path` is "" (the bucket) or "/" + encoded key; `query` is already canonical (sorted, encoded).
  // Reply::curl says whether any HTTP reply came.
  Reply Once(const char* method, const std::string& path, const std::string& query, std::string_view body) {
    Reply reply;
    CURL* h = Acquire();
    if (h == nullptr) {
      reply.curl = CURLE_FAILED_INIT;
      reply.curl_error = "curl_easy_init failed";
      return reply;
    }
    std::string url = bucket_url + path + (query.empty() ? "" : "?" + query);
    char errbuf[CURL_ERROR_SIZE] = {0};
    struct curl_slist* headers = nullptr;
    std::string sha = "x-amz-content-sha256: " + Sha256Hex(body);
    headers = curl_slist_append(headers, sha.c_str());
    // No other custom header: libcurl's SigV4 signs every header in this list, also an empty "Expect:" that
    // only removes a header (and is then not sent), which the server cannot verify.
    std::string token;
    if (!o.credentials.session_token.empty()) {
      token = "x-amz-security-token: " + o.credentials.session_token;
      headers = curl_slist_append(headers, token.c_str());
    }
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
    curl_easy_setopt(h, CURLOPT_USERNAME, o.credentials.access_key_id.c_str());
    curl_easy_setopt(h, CURLOPT_PASSWORD, o.credentials.secret_access_key.c_str());
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout.count()));
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(o.request_timeout.count()));
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                     static_cast<long>(std::max<int64_t>(1, o.low_speed_time.count() / 1000)));
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, o.verify_tls ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, o.verify_tls ? 2L : 0L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &Impl::Write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply.body);
    std::string_view m(method);
    if (m == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (m == "PUT") {
      // The body goes as POSTFIELDS, so that libcurl's SigV4 hashes the same bytes as our x-amz-content-sha256,
      // with the method changed to PUT.
      headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data() != nullptr ? body.data() : "");
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
    } else if (m == "DELETE") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    reply.curl = curl_easy_perform(h);
    if (reply.curl == CURLE_OK) {
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &reply.http);
      curl_off_t len = -1;
      curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
      reply.content_length = len > 0 ? static_cast<uint64_t>(len) : 0;
    } else {
      reply.curl_error = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(reply.curl);
    }
    curl_slist_free_all(headers);
    Release(h);
    return reply;
  }

  // A request with retries of 5xx replies and dropped connections; a transport failure is Unavailable naming
  // the endpoint.
  Result<Reply> Request(const char* method, const std::string& path, const std::string& query,
                        std::string_view body) {
    for (int attempt = 0;; ++attempt) {
      Reply r = Once(method, path, query, body);
      // Refused connections, unknown hosts and timeouts fail at once: retrying would only make the caller wait.
      bool dropped = r.curl == CURLE_GOT_NOTHING || r.curl == CURLE_SEND_ERROR || r.curl == CURLE_RECV_ERROR ||
                     r.curl == CURLE_PARTIAL_FILE;
      bool retry = r.curl == CURLE_OK ? (r.http >= 500 && r.http <= 599) : dropped;
      if (retry && attempt < o.retries) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100 << attempt));
        continue;
      }
      if (r.curl == CURLE_OK) return r;
      std::string target = "/" + o.bucket + path;
      std::string why = r.curl == CURLE_OPERATION_TIMEDOUT ? "timed out" : "unreachable";
      return Status::Unavailable("S3 endpoint " + o.endpoint + " " + why + " (" + method + " " + target +
                                 "): " + r.curl_error);
    }
  }

  // The Status of an HTTP error reply.
  Status ErrorOf(const char* method, const std::string& key, const Reply& r) const {
    std::string code, message;
    if (!r.body.empty()) {
      (void)XmlReader::Parse(r.body, [&](const std::string& path, const std::string& text) {
        if (path == "Error/Code") code = text;
        if (path == "Error/Message") message = text;
      });
    }
    std::string what = std::string(method) + " " + (key.empty() ? "bucket " + o.bucket : Quote(key));
    std::string detail = code.empty() ? "HTTP " + std::to_string(r.http) : code + " (HTTP " + std::to_string(r.http) + ")";
    if (!message.empty()) detail += ": " + message;
    if (r.http == 403 || r.http == 401) {
      std::string hint;
      if (code == "InvalidAccessKeyId") hint = "; check the access key id (AWS_ACCESS_KEY_ID)";
      else if (code == "SignatureDoesNotMatch") hint = "; check the secret access key (AWS_SECRET_ACCESS_KEY) and the region";
      else if (code == "AccessDenied") hint = "; the credentials have no grant for this bucket";
      else if (code.empty()) hint = "; check the credentials";
      return Status(kPermissionDenied, "permission denied: S3 " + detail + " for bucket " + o.bucket + " at " +
                                           o.endpoint + " (" + what + ")" + hint);
    }
    if (r.http == 404) {
      if (code == "NoSuchBucket") return Status::NotFound("bucket " + o.bucket + " does not exist at " + o.endpoint);
      if (!key.empty()) return Status::NotFound("object " + key + " not found in " + Where());
      return Status::NotFound("S3 " + detail + " (" + what + " at " + o.endpoint + ")");
    }
    if (r.http >= 500) return Status::Unavailable("S3 endpoint " + o.endpoint + " failed " + what + ": " + detail);
    if (r.http == 400 || r.http == 411 || r.http == 413) {
      return Status::InvalidArgument("S3 refused " + what + " in " + Where() + ": " + detail);
    }
    return Status::Internal("S3 " + what + " in " + Where() + ": unexpected " + detail);
  }

  // One ListObjectsV2 page.
  Status ListPage(const std::string& prefix, const std::string& token, int max_keys, std::vector<ObjectInfo>* out,
                  std::string* next) {
    // The query is canonical already (parameters sorted, values encoded): SigV4 signs it as sent.
    std::string q;
    if (!token.empty()) q += "continuation-token=" + UriEncode(token, false) + "&";
    q += "list-type=2&max-keys=" + std::to_string(max_keys) + "&prefix=" + UriEncode(prefix, false);
    auto r = Request("GET", "", q, "");
    if (!r.ok()) return r.status();
    if (r->http != 200) return ErrorOf("LIST", "", *r);
    ObjectInfo cur;
    bool truncated = false;
    next->clear();
    Status st = XmlReader::Parse(r->body, [&](const std::string& path, const std::string& text) {
      if (path == "ListBucketResult/Contents/Key") cur.key = text;
      else if (path == "ListBucketResult/Contents/Size") cur.size = std::strtoull(text.c_str(), nullptr, 10);
      else if (path == "ListBucketResult/Contents/LastModified") cur.last_modified_ms = ParseIsoTime(text);
      else if (path == "ListBucketResult/Contents") {
        out->push_back(std::move(cur));
        cur = ObjectInfo{};
      } else if (path == "ListBucketResult/IsTruncated") truncated = text == "true";
      else if (path == "ListBucketResult/NextContinuationToken") *next = text;
    });
    if (!st.ok()) return st.WithContext("S3 listing of " + Where());
    if (truncated && next->empty()) {
      return Status::DataLoss("S3 listing of " + Where() + " is truncated without a NextContinuationToken");
    }
    if (!truncated) next->clear();
    return Status::Ok();
  }
};

namespace {

Status ValidateBucketName(std::string_view b, std::string_view what) {
  auto bad = [&](const std::string& rule) {
    return Status::InvalidArgument(std::string(what) + " " + Quote(b) + " is not a valid S3 bucket name: " + rule);
  };
  if (b.size() < 3 || b.size() > 63) return bad("it must be 3 to 63 characters long");
  for (char c : b) {
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '.' ||
          c == '-')) {
      return bad("only lower-case letters, digits, '.' and '-' are allowed");
    }
  }
  auto alnum = [](char c) { return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)); };
  if (!alnum(b.front()) || !alnum(b.back())) return bad("it must start and end with a letter or a digit");
  if (b.find("..") != std::string_view::npos) return bad("it must not contain '..'");
  if (b.rfind("xn--", 0) == 0) return bad("it must not start with 'xn--'");
  if (b.size() >= 8 && b.substr(b.size() - 8) == "-s3alias") return bad("it must not end with '-s3alias'");
  int dots = 0;
  bool digits_and_dots = true;
  for (char c : b) {
    if (c == '.') ++dots;
    else if (!std::isdigit(static_cast<unsigned char>(c))) digits_and_dots = false;
  }
  if (digits_and_dots && dots == 3) return bad("it must not look like an IPv4 address");
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<S3ObjectStore>> S3ObjectStore::Create(S3Options o) {
  size_t scheme_end = o.endpoint.find("://");
  while (o.endpoint.size() > scheme_end + 3 && o.endpoint.back() == '/') o.endpoint.pop_back();
  std::string_view ep = o.endpoint;
  if (ep.empty()) return Status::InvalidArgument("S3 endpoint is empty (give the S3 API's URL, e.g. http://127.0.0.1:7480)");
  if (scheme_end == std::string_view::npos || (ep.substr(0, scheme_end) != "http" && ep.substr(0, scheme_end) != "https")) {
    return Status::InvalidArgument("S3 endpoint " + Quote(ep) + " must start with http:// or https://");
  }
  std::string_view rest = ep.substr(scheme_end + 3);
  if (rest.empty() || rest.front() == ':' || rest.front() == '/') {
    return Status::InvalidArgument("S3 endpoint " + Quote(ep) + " has no host");
  }
  if (rest.find_first_of("/?#@ ") != std::string_view::npos) {
    return Status::InvalidArgument("S3 endpoint " + Quote(ep) +
                                   " must be scheme://host[:port] only (no path, query, user or space)");
  }
  if (auto st = ValidateBucketName(o.bucket, "S3 bucket"); !st.ok()) return st;
  if (o.region.empty() || o.region.find_first_of(": /") != std::string::npos) {
    return Status::InvalidArgument("S3 region " + Quote(o.region) + " must be non-empty without ':', '/' or spaces");
  }
  if (o.credentials.access_key_id.empty()) return Status::InvalidArgument("S3 credentials: the access key id is empty");
  if (o.credentials.secret_access_key.empty()) {
    return Status::InvalidArgument("S3 credentials: the secret access key is empty");
  }
  if (o.credentials.access_key_id.find(':') != std::string::npos) {
    return Status::InvalidArgument("S3 credentials: the access key id contains ':'");
  }
  if (o.max_keys < 1 || o.max_keys > 1000) {
    return Status::InvalidArgument("S3 max_keys must be 1..1000, not " + std::to_string(o.max_keys));
  }
  if (o.retries < 0) return Status::InvalidArgument("S3 retries must not be negative");
  if (o.connect_timeout.count() <= 0 || o.request_timeout.count() <= 0) {
    return Status::InvalidArgument("S3 connect_timeout and request_timeout must be positive");
  }
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  auto impl = std::make_unique<Impl>();
  impl->bucket_url = o.endpoint + "/" + o.bucket;
  impl->sigv4 = "aws:amz:" + o.region + ":s3";
  impl->o = std::move(o);
  return std::unique_ptr<S3ObjectStore>(new S3ObjectStore(std::move(impl)));
}

S3ObjectStore::S3ObjectStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
S3ObjectStore::~S3ObjectStore() = default;

std::string S3ObjectStore::ObjectUrl(const std::string& key) const {
  return impl_->bucket_url + "/" + UriEncode(key, true);
}

std::string S3ObjectStore::Describe() const { return impl_->Where(); }

Status S3ObjectStore::Put(const std::string& key, std::string_view bytes) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  auto r = impl_->Request("PUT", "/" + UriEncode(key, true), "", bytes);
  if (!r.ok()) return r.status();
  if (r->http != 200) return impl_->ErrorOf("PUT", key, *r);
  return Status::Ok();
}

Result<std::string> S3ObjectStore::Get(const std::string& key) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  auto r = impl_->Request("GET", "/" + UriEncode(key, true), "", "");
  if (!r.ok()) return r.status();
  if (r->http != 200) return impl_->ErrorOf("GET", key, *r);
  return std::move(r->body);
}

Result<ObjectHead> S3ObjectStore::Head(const std::string& key) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  auto r = impl_->Request("HEAD", "/" + UriEncode(key, true), "", "");
  if (!r.ok()) return r.status();
  if (r->http == 404) return ObjectHead{};
  if (r->http != 200) return impl_->ErrorOf("HEAD", key, *r);
  return ObjectHead{true, r->content_length};
}

Result<std::vector<ObjectInfo>> S3ObjectStore::List(const std::string& prefix) {
  if (auto st = ValidatePrefix(prefix); !st.ok()) return st;
  std::vector<ObjectInfo> out;
  std::string token;
  do {
    std::string next;
    if (auto st = impl_->ListPage(prefix, token, impl_->o.max_keys, &out, &next); !st.ok()) return st;
    token = std::move(next);
  } while (!token.empty());
  std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

Status S3ObjectStore::Delete(const std::string& key) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  auto r = impl_->Request("DELETE", "/" + UriEncode(key, true), "", "");
  if (!r.ok()) return r.status();
  if (r->http == 204 || r->http == 200 || (r->http == 404 && r->body.find("NoSuchBucket") == std::string::npos)) {
    return Status::Ok();
  }
  return impl_->ErrorOf("DELETE", key, *r);
}

Status S3ObjectStore::Check() {
  std::vector<ObjectInfo> page;
  std::string next;
  return impl_->ListPage("", "", 1, &page, &next);
}

// ---- directory -------------------------------------------------------------------------------------------

namespace {

Status WriteAll(int fd, std::string_view data, const std::string& what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return util::ErrnoStatus(n < 0 ? errno : ENOSPC, "write " + what);
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

std::atomic<uint64_t> g_tmp_counter{0};

}  // namespace

Result<std::unique_ptr<DirObjectStore>> DirObjectStore::Open(const fs::path& root) {
  if (!root.is_absolute()) {
    return Status::InvalidArgument("repository directory " + Quote(root.string()) + " is not an absolute path");
  }
  if (auto st = util::MakeDirs(root); !st.ok()) return st.WithContext("repository directory");
  return std::unique_ptr<DirObjectStore>(new DirObjectStore(root.lexically_normal()));
}

std::string DirObjectStore::Describe() const { return "file://" + root_.string(); }

Status DirObjectStore::Put(const std::string& key, std::string_view bytes) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  fs::path path = PathOf(key);
  if (auto st = util::MakeDirs(path.parent_path()); !st.ok()) return st;
  fs::path tmp = path;
  tmp += std::string(kTmpMarker) + std::to_string(::getpid()) + "." + std::to_string(g_tmp_counter++);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return util::ErrnoStatus(errno, "cannot create " + tmp.string());
  Status st = WriteAll(fd, bytes, tmp.string());
  if (st.ok() && ::fsync(fd) != 0) st = util::ErrnoStatus(errno, "fsync " + tmp.string());
  if (::close(fd) != 0 && st.ok() && util::IsNoSpace(errno)) st = util::ErrnoStatus(errno, "close " + tmp.string());
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = util::ErrnoStatus(errno, "rename " + tmp.string() + " to " + path.string());
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return util::FsyncPath(path.parent_path());
}

Result<std::string> DirObjectStore::Get(const std::string& key) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  fs::path path = PathOf(key);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::NotFound("object " + key + " not found in " + Describe());
    return util::ErrnoStatus(errno, "cannot open " + path.string());
  }
  struct stat sb;
  if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    ::close(fd);
    return Status::NotFound("object " + key + " not found in " + Describe() + " (not a regular file)");
  }
  std::string out(static_cast<size_t>(sb.st_size), '\0');
  size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::pread(fd, out.data() + off, out.size() - off, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return util::ErrnoStatus(e, "read " + path.string());
    }
    if (n == 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(off);
  return out;
}

Result<ObjectHead> DirObjectStore::Head(const std::string& key) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  struct stat sb;
  fs::path path = PathOf(key);
  if (::stat(path.c_str(), &sb) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return ObjectHead{};
    return util::ErrnoStatus(errno, "stat " + path.string());
  }
  if (!S_ISREG(sb.st_mode)) return ObjectHead{};
  return ObjectHead{true, static_cast<uint64_t>(sb.st_size)};
}

Result<std::vector<ObjectInfo>> DirObjectStore::List(const std::string& prefix) {
  if (auto st = ValidatePrefix(prefix); !st.ok()) return st;
  size_t slash = prefix.rfind('/');
  fs::path dir = slash == std::string::npos ? root_ : root_ / prefix.substr(0, slash);
  std::vector<ObjectInfo> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) return Status::Unavailable("cannot list " + dir.string() + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) return Status::Unavailable("cannot list " + dir.string() + ": " + ec.message());
    if (!it->is_regular_file(ec)) continue;
    std::string key = it->path().lexically_relative(root_).generic_string();
    if (key.find(kTmpMarker) != std::string::npos) continue;
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    struct stat sb;
    if (::stat(it->path().c_str(), &sb) != 0) continue;  // removed meanwhile
    out.push_back({std::move(key), static_cast<uint64_t>(sb.st_size),
                   static_cast<int64_t>(sb.st_mtim.tv_sec) * 1000 + sb.st_mtim.tv_nsec / 1000000});
  }
  std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

Status DirObjectStore::Delete(const std::string& key) {
  if (auto st = ValidateKey(key); !st.ok()) return st;
  fs::path path = PathOf(key);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR) {
    return util::ErrnoStatus(errno, "unlink " + path.string());
  }
  return Status::Ok();
}

Status DirObjectStore::Check() {
  struct stat sb;
  if (::stat(root_.c_str(), &sb) != 0) return util::ErrnoStatus(errno, "repository directory " + root_.string());
  if (!S_ISDIR(sb.st_mode)) return Status::FailedPrecondition("repository path " + root_.string() + " is not a directory");
  if (::access(root_.c_str(), W_OK | X_OK) != 0) {
    return Status(kPermissionDenied, "permission denied: repository directory " + root_.string() + " is not writable");
  }
  return Status::Ok();
}

// ---- URLs ------------------------------------------------------------------------------------------------

std::string RepositoryUrl::ToString() const {
  if (kind == Kind::kDir) return "file://" + path;
  return "s3://" + bucket + (prefix.empty() ? "" : "/" + prefix);
}

Result<RepositoryUrl> ParseRepositoryUrl(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("repository URL " + Quote(url) + ": " + why);
  };
  if (url.empty()) return bad("empty (expected s3://BUCKET/PREFIX or file:///ABSOLUTE/DIR)");
  RepositoryUrl out;
  if (url.rfind("s3://", 0) == 0) {
    out.kind = RepositoryUrl::Kind::kS3;
    std::string_view rest = url.substr(5);
    size_t slash = rest.find('/');
    std::string_view bucket = rest.substr(0, slash);
    if (bucket.empty()) return bad("no bucket (expected s3://BUCKET/PREFIX)");
    if (auto st = ValidateBucketName(bucket, "bucket"); !st.ok()) return bad(st.message());
    out.bucket = std::string(bucket);
    if (slash != std::string_view::npos) {
      std::string_view prefix = rest.substr(slash + 1);
      while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
      if (!prefix.empty()) {
        if (auto st = CheckSegments(prefix, "prefix"); !st.ok()) return bad(st.message());
        if (prefix.find_first_of("?#%") != std::string_view::npos) return bad("the prefix must not contain '?', '#' or '%'");
      }
      out.prefix = std::string(prefix);
    }
    return out;
  }
  if (url.rfind("file:", 0) == 0) {
    out.kind = RepositoryUrl::Kind::kDir;
    if (url.rfind("file://", 0) != 0) return bad("a file URL is file:///ABSOLUTE/DIR");
    std::string_view path = url.substr(7);
    if (path.empty() || path.front() != '/') {
      return bad("a file URL needs an absolute path and no host (file:///ABSOLUTE/DIR; a relative path or a host is "
                 "not supported)");
    }
    if (path.find('%') != std::string_view::npos) return bad("percent-encoding is not supported in a file URL");
    if (path.find('\0') != std::string_view::npos) return bad("the path contains a NUL byte");
    std::string p(path);
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    for (const auto& seg : fs::path(p)) {
      if (seg == "." || seg == "..") return bad("the path must not contain a '" + seg.string() + "' segment");
    }
    if (p == "/") return bad("the repository directory must not be '/'");
    out.path = fs::path(p).lexically_normal().string();
    return out;
  }
  size_t colon = url.find("://");
  if (colon != std::string_view::npos) {
    return bad("unsupported scheme '" + std::string(url.substr(0, colon)) + "' (expected s3:// or file://)");
  }
  return bad("not a URL (expected s3://BUCKET/PREFIX or file:///ABSOLUTE/DIR)");
}

Result<std::unique_ptr<ObjectStore>> OpenObjectStore(const RepositoryUrl& url, S3Options s3) {
  if (url.kind == RepositoryUrl::Kind::kDir) {
    auto d = DirObjectStore::Open(url.path);
    if (!d.ok()) return d.status();
    return std::unique_ptr<ObjectStore>(std::move(*d));
  }
  s3.bucket = url.bucket;
  auto s = S3ObjectStore::Create(std::move(s3));
  if (!s.ok()) return s.status();
  return std::unique_ptr<ObjectStore>(std::move(*s));
}

}  // namespace fcwarm::repo
