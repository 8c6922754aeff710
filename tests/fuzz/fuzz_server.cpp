// libFuzzer target over the server's request path: HTTP parsing (fed in pieces, as a socket would), target
// decoding, routing, authentication, JSON decoding and the API handlers, over an in-memory store.
//
// Input layout: byte 0 picks the split size of the incremental feed (1..256 bytes per Feed call); the rest is
// the byte stream of one connection.
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <memory>
#include <string>

#include "api.hpp"
#include "containers.hpp"
#include "fcwarm/service.hpp"
#include "http.hpp"
#include "none_vmm.hpp"
#include "request_parser.hpp"

namespace {

using namespace fcwarm;
using namespace fcwarm::server;

struct Env {
  std::unique_ptr<Service> service;
  std::unique_ptr<ContainerService> containers;
  std::unique_ptr<Api> api;
  std::unique_ptr<Api> api_auth;
};

Env* MakeEnv() {
  spdlog::set_level(spdlog::level::off);
  char tmpl[] = "/tmp/fcwarm-fuzz-XXXXXX";
  const char* dir = mkdtemp(tmpl);
  if (!dir) abort();
  static std::string temp_dir = dir;
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(temp_dir, ec);
  });
  auto vmms = std::make_shared<VmmRegistry>();
  vmms->Add(MakeNoneVmm());
  ServiceOptions opts;
  opts.store.path = ":memory:";
  opts.snapshots.root_dir = std::string(dir) + "/snapshots";
  opts.snapshots.build_dir = std::string(dir) + "/build";
  opts.snapshots.reconcile_processes = false;
  opts.restore.vm_dir = std::string(dir) + "/vms";
  opts.restore.wait_for_creating = std::chrono::milliseconds(0);
  opts.health.auto_rebuild = false;
  opts.containers.start_workers = 1;  // background starts (they fail at once: no VMM) on one thread
  auto svc = Service::Open(opts, vmms);
  if (!svc.ok()) {
    std::fprintf(stderr, "fuzz: cannot open the service: %s\n", svc.status().ToString().c_str());
    abort();
  }
  auto* env = new Env;
  env->service = std::move(svc).value();
  env->containers = std::make_unique<ContainerService>(*env->service);
  env->api = std::make_unique<Api>(*env->service, *env->containers, ApiOptions{}, nullptr);
  ApiOptions auth;
  auth.auth_token = "fuzz-token-0123456789";
  env->api_auth = std::make_unique<Api>(*env->service, *env->containers, auth, nullptr);
  return env;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env* env = MakeEnv();
  if (size < 1) return 0;
  size_t step = static_cast<size_t>(data[0]) + 1;
  bool use_auth = (data[0] & 1) != 0;
  const char* p = reinterpret_cast<const char*>(data + 1);
  size_t n = size - 1;

  ParserLimits limits;
  limits.max_body_bytes = 4096;
  limits.max_header_bytes = 2048;
  limits.max_url_bytes = 1024;
  limits.max_headers = 32;
  RequestParser parser(limits);
  int continues = 0;
  parser.on_expect_continue = [&] { ++continues; };
  std::deque<HttpRequest> requests;
  for (size_t off = 0; off < n; off += step) {
    if (!parser.Feed(p + off, std::min(step, n - off), requests)) break;
  }
  parser.FeedEof(requests);
  Api& api = use_auth ? *env->api_auth : *env->api;
  for (auto& r : requests) {
    r.request_id = "fuzz";
    HttpResponse resp = api.Handle(r);
    if (resp.status < 100 || resp.status > 599) abort();
    std::string wire = SerializeResponse(resp, r.keep_alive, r.request_id, r.method == "HEAD");
    if (r.method != "HEAD" && wire.size() < resp.body.size()) abort();
  }
  if (parser.failed()) {
    int st = parser.error_status();
    if (st < 400 || st > 599) abort();
  }
  return 0;
}
