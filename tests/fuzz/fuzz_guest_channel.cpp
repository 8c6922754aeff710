// libFuzzer target over the host side of the guest agent protocol (docs/guest-protocol.md): a real
// StreamGuestChannel (src/guest/stream_channel.*, src/guest/line_stream.*) whose connections are socketpairs;
// the fuzzer's bytes are everything the "agent" sends, the harness makes a sequence of calls chosen by the
// input. Every call must return (a Status or a value), replies must not make the host allocate beyond what it
// received, and every request line the host writes must be one well-formed protocol request.
//
// Input layout:
//   byte 0   flags: bit0 persistent connection (virtio-serial) else one connection per call (vsock);
//            bit1 small reply cap (256 bytes) else 64 KiB; bit2 a diagnose callback; bit3 the agent stays
//            silent after its last bytes (calls then end at their deadline) instead of closing.
//   byte 1   number of calls, 1 + (byte % 8)
//   next N   one byte per call: low 4 bits pick the call, the high bits its variant
//   rest     the agent's bytes; 0x1e (ASCII record separator, never valid inside JSON) starts the bytes of
//            the next connection (each reconnect takes the next segment; when none is left, the connector
//            fails).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/vmm.hpp"
#include "guest/stream_channel.hpp"

namespace {

using namespace fcwarm;
namespace json = boost::json;
using std::chrono::milliseconds;

[[noreturn]] void Fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "fuzz_guest_channel: %s: %.*s\n", what, static_cast<int>(std::min<size_t>(detail.size(), 400)),
               detail.data());
  std::abort();
}

// The harness's side of the connections: the "agent" ends of the socketpairs.
struct Agent {
  std::vector<std::string_view> segments;
  size_t next = 0;
  bool silent_end = false;
  std::vector<int> fds;              // agent ends, closed at the end of the input
  std::vector<std::string> pending;  // per connection: request bytes not yet split into lines
  size_t request_lines = 0;

  ~Agent() {
    for (int fd : fds) ::close(fd);
  }

  Result<int> Connect() {
    if (next >= segments.size()) return Status::Unavailable("fuzz: no more agent connections");
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) Fail("socketpair", std::strerror(errno));
    std::string_view seg = segments[next++];
    ::fcntl(sv[1], F_SETFL, O_NONBLOCK);
    size_t off = 0;
    while (off < seg.size()) {  // the fuzzer's -max_len keeps this far below the socket buffer
      ssize_t n = ::send(sv[1], seg.data() + off, seg.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    const bool last = next == segments.size();
    if (!(silent_end && last)) ::shutdown(sv[1], SHUT_WR);  // the agent's bytes end: EOF after them
    fds.push_back(sv[1]);
    pending.emplace_back();
    return sv[0];
  }

  // Reads what the host wrote so far and checks each request line.
  void Drain() {
    char buf[65536];
    for (size_t i = 0; i < fds.size(); ++i) {
      std::string& p = pending[i];
      while (true) {
        ssize_t n = ::recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        p.append(buf, static_cast<size_t>(n));
      }
      size_t pos;
      while ((pos = p.find('\n')) != std::string::npos) {
        CheckRequest(std::string_view(p).substr(0, pos));
        p.erase(0, pos + 1);
      }
    }
  }

  void CheckRequest(std::string_view line) {
    ++request_lines;
    if (line.size() > 65536) Fail("request line over the protocol's 64 KiB", line);
    boost::system::error_code ec;
    json::value v = json::parse(json::string_view(line.data(), line.size()), ec);
    if (ec || !v.is_object()) Fail("request is not a JSON object", line);
    const auto& o = v.as_object();
    const auto* ver = o.if_contains("v");
    const auto* id = o.if_contains("id");
    const auto* op = o.if_contains("op");
    if (!ver || !ver->is_int64() || ver->as_int64() != 1) Fail("request without v=1", line);
    if (!id || !id->is_int64() || id->as_int64() <= 0) Fail("request without a positive integer id", line);
    if (!op || !op->is_string() || op->as_string().empty()) Fail("request without op", line);
  }
};

constexpr int kCalls = 11;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t flags = data[0];
  const size_t ncalls = 1 + data[1] % 8;
  if (size < 2 + ncalls) return 0;
  const uint8_t* calls = data + 2;
  std::string_view rest(reinterpret_cast<const char*>(data + 2 + ncalls), size - 2 - ncalls);

  Agent agent;
  size_t start = 0;
  while (true) {
    size_t sep = rest.find('\x1e', start);
    agent.segments.push_back(rest.substr(start, sep == std::string_view::npos ? std::string_view::npos : sep - start));
    if (sep == std::string_view::npos) break;
    start = sep + 1;
  }
  bool streams = false;
  for (size_t i = 0; i < ncalls; ++i) streams = streams || calls[i] % 16 == 6;
  // A silent agent makes each call wait its deadline; DockerStream then also spends its fixed 2 s cancel, too
  // slow for fuzzing: silence only without streams.
  agent.silent_end = (flags & 8) != 0 && !streams;

  guest::StreamChannelOptions opts;
  opts.persistent = (flags & 1) != 0;
  opts.max_reply_bytes = (flags & 2) != 0 ? 256 : 65536;
  opts.label = "vm fuzz: ";
  if (flags & 4) opts.diagnose = [] { return std::string("VMM exited (fuzz)"); };
  auto channel = guest::MakeStreamGuestChannel([&agent](milliseconds) { return agent.Connect(); }, opts);

  const milliseconds timeout(agent.silent_end ? 2 : 200);
  // Longer deadlines change what the channel asks of the agent (the guest-side timeout_ms it derives); only
  // when the agent closes after its bytes, so no call waits for them.
  auto longer = [&](int ms) { return agent.silent_end ? timeout : milliseconds(ms); };
  size_t body_bytes = 0;
  auto on_body = [&](std::string_view b) { body_bytes += b.size(); };
  for (size_t i = 0; i < ncalls; ++i) {
    const uint8_t sel = calls[i];
    const int variant = sel >> 4;
    Status st;
    switch (sel % 16 % kCalls) {
      case 0: {
        auto r = channel->Ping(timeout);
        st = r.status();
        if (r.ok() && r->boot_id.size() > size) Fail("ping: boot_id longer than the input");
        break;
      }
      case 1: {
        IdentityRequest req;
        req.hostname = "clone-1";
        req.mac = "02:fc:00:00:00:05";
        req.ip_cidr = "10.213.0.22/30";
        req.gateway = "10.213.0.21";
        req.entropy = std::string(32, '\x5a');
        req.wall_clock_ns = 1700000000000000000;
        if (variant & 1) req.dns = {"10.0.0.53"};
        if (variant & 2) req.docker = GuestDockerSettings{{"http://10.0.0.1:5000"}, {"10.0.0.0/8"}};
        auto r = channel->SetIdentity(req, variant & 4 ? longer(3000) : timeout);
        st = r.status();
        break;
      }
      case 2: {
        RuntimeCheck check;
        const char* kinds[] = {"none", "file", "docker", "command"};
        check.kind = kinds[variant % 4];
        check.path = check.kind == "file" ? "/run/ready" : "";
        if (check.kind == "command") check.argv = {"true"};
        auto r = channel->RuntimeReady(check, variant & 4 ? longer(1500) : timeout);
        st = r.status();
        break;
      }
      case 3:
        st = channel->Quiesce(timeout);
        break;
      case 4: {
        ExecRequest req;
        req.argv = {"sh", "-c", "echo hi"};
        if (variant & 1) req.stdin_data = "input";
        if (variant & 2) req.argv.clear();  // refused before anything is sent
        auto r = channel->Exec(req, timeout);
        st = r.status();
        if (r.ok() && r->stdout_data.size() + r->stderr_data.size() > size) Fail("exec: output longer than the input");
        break;
      }
      case 5: {
        DockerRequest req;
        req.method = variant & 1 ? "POST" : "GET";
        req.path = variant & 2 ? "/v1.41/containers/create?name=web" : "/_ping";
        if (variant & 1) req.body = "{\"Image\":\"busybox\"}";
        if (variant & 4) req.path = "/bad path";  // refused before anything is sent
        auto r = channel->Docker(req, timeout);
        st = r.status();
        if (r.ok() && r->body.size() > size) Fail("docker: body longer than the input");
        break;
      }
      case 6: {
        DockerRequest req;
        req.method = "POST";
        req.path = "/v1.41/images/create?fromImage=busybox&tag=latest";
        req.timeout = milliseconds(1000);
        auto r = channel->DockerStream(req, on_body, variant & 1 ? milliseconds(1) : timeout);
        st = r.status();
        if (body_bytes > size) Fail("docker stream: more body bytes than the input");
        break;
      }
      case 7: {
        LaunchRequest req;
        req.channel = "/run/fcwarm/parked/web";
        req.argv = {"nginx", "-g", "daemon off;"};
        req.env = {"PATH=/usr/bin"};
        if (variant & 1) req.cwd = "/srv";
        if (variant & 2) req.user = "nobody";
        if (variant & 4) req.hostname_file = "/etc/hostname";
        st = channel->Launch(req, timeout);
        break;
      }
      case 8: {
        auto r = channel->LaunchWaiting("/run/fcwarm/parked/web", timeout);
        st = r.status();
        break;
      }
      case 9: {
        // A request over the 64 KiB line limit: refused on the host, nothing sent.
        ExecRequest req;
        req.argv = {"sh", "-c", std::string(70000, 'x')};
        auto r = channel->Exec(req, timeout);
        if (r.ok()) Fail("exec of a 70 KB argv succeeded");
        st = r.status();
        break;
      }
      default: {
        RuntimeCheck check;
        check.kind = "command";
        check.argv = {"sh", "-c", "test -S /var/run/docker.sock"};
        auto r = channel->RuntimeReady(check, timeout);
        st = r.status();
        break;
      }
    }
    if (!st.ok() && st.message().empty()) Fail("an error without a message");
    agent.Drain();
  }
  channel.reset();
  agent.Drain();
  return 0;
}
