// docker::Client alone, against a scripted transport: the requests it frames and how it reads the replies.
#include "docker/docker_client.hpp"

#include <doctest/doctest.h>

#include <boost/json.hpp>
#include <deque>
#include <memory>

using namespace fcwarm;
namespace json = boost::json;

namespace {

// Answers requests from a script, in order, and keeps every request it saw.
class ScriptedTransport : public docker::Transport {
 public:
  Result<DockerResponse> RoundTrip(const DockerRequest& request) override {
    requests.push_back(request);
    REQUIRE_FALSE(replies.empty());
    auto reply = replies.front();
    replies.pop_front();
    return reply;
  }
  std::deque<Result<DockerResponse>> replies;
  std::vector<DockerRequest> requests;
};

struct Fixture {
  explicit Fixture(docker::ClientOptions options = {"v1.41", std::chrono::milliseconds(1234)}) {
    auto t = std::make_unique<ScriptedTransport>();
    transport = t.get();
    client = std::make_unique<docker::Client>(std::move(t), std::move(options));
  }
  void Reply(int status, std::string body = "", bool truncated = false) {
    transport->replies.push_back(DockerResponse{status, std::move(body), truncated});
  }
  void Fail(Status st) { transport->replies.push_back(std::move(st)); }
  const DockerRequest& last() const { return transport->requests.back(); }

  ScriptedTransport* transport;
  std::unique_ptr<docker::Client> client;
};

// One frame of Docker's multiplexed stream.
std::string Frame(char stream, const std::string& payload) {
  std::string h(8, '\0');
  h[0] = stream;
  auto n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) h[4 + i] = static_cast<char>(n >> (24 - 8 * i));
  return h + payload;
}

const std::string kId = std::string(64, 'a');

}  // namespace

TEST_CASE("create: POST /v1.41/containers/create with the container as JSON, Docker's id back") {
  Fixture f;
  f.Reply(201, R"({"Id":")" + kId + R"(","Warnings":[]})");
  docker::ContainerConfig config{.image = "busybox:latest",
                                 .cmd = {"echo", "hi there"},
                                 .env = {"A=1", "B=x y"},
                                 .labels = {{"org.fcwarm.container", "c1"}},
                                 .network_mode = "none"};
  auto id = f.client->Create(config);
  REQUIRE_MESSAGE(id.ok(), id.status().ToString());
  CHECK(*id == kId);
  REQUIRE(f.transport->requests.size() == 1);
  CHECK(f.last().method == "POST");
  CHECK(f.last().path == "/v1.41/containers/create");
  CHECK(f.last().timeout == std::chrono::milliseconds(1234));
  auto body = json::parse(f.last().body).as_object();
  CHECK(json::serialize(body.at("Image")) == R"("busybox:latest")");
  CHECK(json::serialize(body.at("Cmd")) == R"(["echo","hi there"])");
  CHECK(json::serialize(body.at("Env")) == R"(["A=1","B=x y"])");
  CHECK(json::serialize(body.at("Labels")) == R"({"org.fcwarm.container":"c1"})");
  CHECK(json::serialize(body.at("HostConfig")) == R"({"NetworkMode":"none"})");
}

TEST_CASE("create: no command leaves Cmd out (the image's default), no network mode leaves HostConfig out") {
  Fixture f;
  f.Reply(201, R"({"Id":")" + kId + R"("})");
  REQUIRE(f.client->Create({.image = "busybox"}).ok());
  auto body = json::parse(f.last().body).as_object();
  CHECK_FALSE(body.contains("Cmd"));
  CHECK_FALSE(body.contains("HostConfig"));
  CHECK(json::serialize(body.at("Env")) == "[]");
}

TEST_CASE(
    "start, inspect, logs, stop and wait name the container in the path, under the configured version") {
  Fixture f({"v1.43", std::chrono::milliseconds(500)});
  f.Reply(204);
  f.Reply(304);  // already started: not an error
  f.Reply(200, R"({"Id":"x","State":{"Status":"exited","ExitCode":3,"Running":false}})");
  f.Reply(200, Frame(1, "out\n"));
  f.Reply(204);
  f.Reply(304);  // already stopped: not an error
  f.Reply(200, R"({"StatusCode":7,"Error":null})");
  CHECK(f.client->Start(kId).ok());
  CHECK(f.client->Start(kId).ok());
  auto state = f.client->Inspect(kId);
  REQUIRE(state.ok());
  CHECK(state->status == "exited");
  CHECK(state->exit_code == 3);
  CHECK(state->Exited());
  auto logs = f.client->Logs(kId);
  REQUIRE(logs.ok());
  CHECK(logs->stdout_data == "out\n");
  CHECK(f.client->Stop(kId, std::chrono::seconds(10)).ok());
  CHECK(f.client->Stop(kId, std::chrono::seconds(0)).ok());
  auto code = f.client->Wait(kId);
  REQUIRE(code.ok());
  CHECK(*code == 7);

  const auto& r = f.transport->requests;
  REQUIRE(r.size() == 7);
  const std::string c = "/v1.43/containers/" + kId;
  CHECK((r[0].method == "POST" && r[0].path == c + "/start" && r[0].body.empty()));
  CHECK((r[2].method == "GET" && r[2].path == c + "/json"));
  CHECK((r[3].method == "GET" && r[3].path == c + "/logs?stdout=1&stderr=1"));
  CHECK((r[4].method == "POST" && r[4].path == c + "/stop?t=10"));
  CHECK(r[5].path == c + "/stop?t=0");
  CHECK((r[6].method == "POST" && r[6].path == c + "/wait?condition=not-running"));
  for (const auto& req : r) CHECK(req.timeout == std::chrono::milliseconds(500));
}

TEST_CASE("inspect: a running container, and an exit code missing from the reply") {
  Fixture f;
  f.Reply(200, R"({"State":{"Status":"running","ExitCode":0}})");
  f.Reply(200, R"({"State":{"Status":"dead"}})");
  auto running = f.client->Inspect(kId);
  REQUIRE(running.ok());
  CHECK_FALSE(running->Exited());
  auto dead = f.client->Inspect(kId);
  REQUIRE(dead.ok());
  CHECK(dead->Exited());
  CHECK(dead->exit_code == -1);
}

TEST_CASE("logs: interleaved stdout and stderr frames are split in order, stdin frames count as stdout") {
  Fixture f;
  f.Reply(200,
          Frame(1, "a") + Frame(2, "x") + Frame(1, "b\n") + Frame(2, "y\n") + Frame(0, "c") + Frame(1, ""));
  auto logs = f.client->Logs(kId);
  REQUIRE(logs.ok());
  CHECK(logs->stdout_data == "ab\nc");
  CHECK(logs->stderr_data == "xy\n");
  CHECK_FALSE(logs->truncated);
}

TEST_CASE("logs: a reply cut inside a frame keeps what arrived, a header cut off is dropped") {
  std::string two = Frame(1, "first\n") + Frame(2, "second line\n");
  SUBCASE("cut inside the second payload") {
    auto out = docker::Demultiplex(two.substr(0, two.size() - 5), true);
    CHECK(out.stdout_data == "first\n");
    CHECK(out.stderr_data == "second ");
    CHECK(out.truncated);
  }
  SUBCASE("cut inside the second header") {
    auto out = docker::Demultiplex(two.substr(0, Frame(1, "first\n").size() + 3), true);
    CHECK(out.stdout_data == "first\n");
    CHECK(out.stderr_data.empty());
  }
  SUBCASE("through the client, the transport's truncated flag is kept") {
    Fixture f;
    f.Reply(200, two.substr(0, 20), true);
    auto logs = f.client->Logs(kId);
    REQUIRE(logs.ok());
    CHECK(logs->stdout_data == "first\n");
    CHECK(logs->truncated);
  }
}

TEST_CASE("logs: a TTY container's raw stream is stdout") {
  CHECK(docker::Demultiplex("hello world\n", false).stdout_data == "hello world\n");
  CHECK(docker::Demultiplex("hi", false).stdout_data == "hi");              // shorter than a frame header
  auto raw = docker::Demultiplex(Frame(1, "ok") + "then raw text", false);  // a second header that is not one
  CHECK(raw.stdout_data == Frame(1, "ok") + "then raw text");
  CHECK(raw.stderr_data.empty());
  auto empty = docker::Demultiplex("", false);
  CHECK(empty.stdout_data.empty());
  CHECK(empty.stderr_data.empty());
}

TEST_CASE("errors: Docker's message, the status code mapped, the call named") {
  Fixture f;
  SUBCASE("404 with a JSON message: create blames the request, start the daemon") {
    f.Reply(404, R"({"message":"No such image: nginx:latest"})");
    f.Reply(404, R"({"message":"No such container: abc"})");
    auto created = f.client->Create({.image = "nginx:latest"});
    CHECK(created.status().code() == StatusCode::kNotFound);
    CHECK(created.status().message() == "docker create: HTTP 404: No such image: nginx:latest");
    auto started = f.client->Start(kId);
    CHECK(started.code() == StatusCode::kUnavailable);
    CHECK(started.message() == "docker start: HTTP 404: No such container: abc");
  }
  SUBCASE("other 4xx of create are the request's fault, 5xx the daemon's") {
    f.Reply(409, R"({"message":"Conflict. The container name is already in use"})");
    f.Reply(500, R"({"message":"driver failed"})");
    CHECK(f.client->Create({.image = "busybox"}).status().code() == StatusCode::kInvalidArgument);
    auto created = f.client->Create({.image = "busybox"});
    CHECK(created.status().code() == StatusCode::kUnavailable);
    CHECK(created.status().message() == "docker create: HTTP 500: driver failed");
  }
  SUBCASE("500 on logs and inspect") {
    f.Reply(500, R"({"message":"oops"})");
    f.Reply(500, R"({"message":"oops"})");
    CHECK(f.client->Logs(kId).status().message() == "docker logs: HTTP 500: oops");
    CHECK(f.client->Inspect(kId).status().code() == StatusCode::kUnavailable);
  }
  SUBCASE("a non-JSON body is quoted, printable and cut at 200 bytes") {
    f.Reply(502, "Bad\r\nGateway" + std::string(300, 'x'));
    auto st = f.client->Start(kId);
    CHECK(st.message() == "docker start: HTTP 502: Bad  Gateway" + std::string(188, 'x'));
  }
  SUBCASE("a transport error keeps its code, with the call as context") {
    f.Fail(Status::Unavailable("connect /var/run/docker.sock: Connection refused"));
    f.Fail(Status::DeadlineExceeded("no answer"));
    auto created = f.client->Create({.image = "busybox"});
    CHECK(created.status().code() == StatusCode::kUnavailable);
    CHECK(created.status().message() == "docker create: connect /var/run/docker.sock: Connection refused");
    CHECK(f.client->Logs(kId).status().ToString() == "deadline_exceeded: docker logs: no answer");
  }
  SUBCASE("replies that lack what the call needs") {
    f.Reply(201, R"({"Warnings":[]})");
    f.Reply(201, R"({"Id":"not-hex"})");
    f.Reply(200, R"({"Id":"x"})");
    f.Reply(200, "not json");
    f.Reply(200, R"({"StatusCode":1,"Error":{"Message":"container vanished"}})");
    CHECK(f.client->Create({.image = "busybox"}).status().message() ==
          R"(docker create: reply has no container Id: {"Warnings":[]})");
    CHECK(f.client->Create({.image = "busybox"}).status().code() == StatusCode::kUnavailable);
    CHECK(f.client->Inspect(kId).status().message() == "docker inspect: reply has no State object");
    CHECK(f.client->Wait(kId).status().message() == "docker wait: reply has no StatusCode");
    CHECK(f.client->Wait(kId).status().message() == "docker wait: container vanished");
  }
  SUBCASE("an id that would change the request path is refused without a request") {
    CHECK(f.client->Start("../images/x").code() == StatusCode::kInvalidArgument);
    CHECK(f.client->Logs("a?b").status().code() == StatusCode::kInvalidArgument);
    CHECK(f.client->Inspect("").status().code() == StatusCode::kInvalidArgument);
    CHECK(f.transport->requests.empty());
  }
}

TEST_CASE("image list: tags, digests of untagged images, sorted and unique, <none> left out") {
  Fixture f;
  f.Reply(200,
          R"([{"Id":"sha256:1","RepoTags":["nginx:alpine","nginx:latest"],"RepoDigests":["nginx@sha256:aa"]},
                   {"Id":"sha256:2","RepoTags":["busybox:latest"]},
                   {"Id":"sha256:3","RepoTags":null,"RepoDigests":["app@sha256:bb"]},
                   {"Id":"sha256:4","RepoTags":["<none>:<none>"],"RepoDigests":["<none>@<none>"]},
                   {"Id":"sha256:5","RepoTags":["busybox:latest"]}, 7])");
  auto list = f.client->ListImages();
  REQUIRE(list.ok());
  CHECK(f.last().method == "GET");
  CHECK(f.last().path == "/v1.41/images/json");
  CHECK(*list == std::vector<std::string>{"app@sha256:bb", "busybox:latest", "nginx:alpine", "nginx:latest"});
  f.Reply(200, "[]");
  CHECK(f.client->ListImages()->empty());
  f.Reply(200, R"({"message":"not a list"})");
  CHECK(f.client->ListImages().status().message() == "docker image list: the reply is not a JSON array");
  f.Reply(200, "[", true);
  CHECK(f.client->ListImages().status().message() == "docker image list: the reply was cut short");
  f.Reply(500, R"({"message":"boom"})");
  CHECK(f.client->ListImages().status().message() == "docker image list: HTTP 500: boom");
}

TEST_CASE("pull checked: a complete stream is believed, a cut one is checked against the daemon") {
  Fixture f;
  const std::string done = R"({"status":"Status: Downloaded newer image for nginx:alpine"})";
  f.Reply(200, done + "\n");
  auto ok = f.client->PullChecked("nginx:alpine");
  REQUIRE(ok.ok());
  CHECK(ok->complete);
  CHECK(f.transport->requests.size() == 1);
  // Cut short: the daemon decides.
  f.Reply(200, R"({"status":"Pulling fs layer","id":"a"})", true);
  f.Reply(200, R"({"Id":"sha256:1"})");
  auto cut = f.client->PullChecked("nginx:alpine");
  REQUIRE(cut.ok());
  CHECK_FALSE(cut->complete);
  CHECK(f.last().path == "/v1.41/images/nginx:alpine/json");
  f.Reply(200, R"({"status":"Pulling fs layer","id":"a"})", true);
  f.Reply(404, R"({"message":"No such image: nginx:alpine"})");
  auto lost = f.client->PullChecked("nginx:alpine");
  CHECK(lost.status().code() == StatusCode::kUnavailable);
  CHECK(lost.status().message() ==
        "docker pull: the daemon ended the pull of nginx:alpine without the image");
  // Docker's own error is passed on.
  f.Reply(200, R"({"error":"manifest unknown"})");
  CHECK(f.client->PullChecked("nginx:alpine").status().message() == "docker pull: manifest unknown");
}

TEST_CASE("pull stream parser: progress from pieces split anywhere, the same summary as the whole stream") {
  const std::string stream =
      R"({"status":"Pulling from library/nginx","id":"alpine"})" "\n"
      R"({"status":"Already exists","progressDetail":{},"id":"l0"})" "\n"
      R"({"status":"Pulling fs layer","progressDetail":{},"id":"l1"})" "\n"
      R"({"status":"Pulling fs layer","progressDetail":{},"id":"l2"})" "\n"
      R"({"status":"Waiting","progressDetail":{},"id":"l2"})" "\n"
      R"({"status":"Downloading","progressDetail":{"current":300,"total":1000},"id":"l1"})" "\n"
      R"({"status":"Downloading","progressDetail":{"current":200,"total":1000},"id":"l1"})" "\n"
      R"({"status":"Verifying Checksum","progressDetail":{},"id":"l1"})" "\n"
      R"({"status":"Download complete","progressDetail":{},"id":"l1"})" "\n"
      R"({"status":"Extracting","progressDetail":{"current":5000,"total":1000},"id":"l1"})" "\n"
      R"({"status":"Pull complete","progressDetail":{},"id":"l1"})" "\n"
      R"({"status":"Downloading","progressDetail":{"current":10,"total":20},"id":"l2"})" "\n"
      R"({"status":"Pull complete","progressDetail":{},"id":"l2"})" "\n"
      R"({"status":"Status: Downloaded newer image for nginx:alpine"})";  // no final newline
  auto whole = docker::ParsePullStream(stream);
  REQUIRE(whole.ok());
  CHECK(whole->layers == 2);
  CHECK(whole->bytes == 1020);
  CHECK(whole->complete);
  // Every split point: the pieces give the same summary, and the progress only grows.
  for (size_t cut = 0; cut <= stream.size(); cut += 7) {
    docker::PullStreamParser p;
    p.Feed(stream.substr(0, cut));
    auto mid = p.progress();
    p.Feed(stream.substr(cut));
    CHECK(mid.layers <= p.progress().layers);
    CHECK(mid.bytes <= p.progress().bytes);
    auto s = p.Finish();
    REQUIRE(s.ok());
    CHECK(s->layers == whole->layers);
    CHECK(s->bytes == whole->bytes);
    CHECK(s->complete);
  }
  // Line by line: what a reader sees while it runs.
  docker::PullStreamParser p;
  std::vector<docker::PullProgress> seen;
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t nl = stream.find('\n', pos);
    size_t end = nl == std::string::npos ? stream.size() : nl + 1;
    p.Feed(std::string_view(stream).substr(pos, end - pos));
    if (seen.empty() || !(seen.back() == p.progress())) seen.push_back(p.progress());
    pos = end;
  }
  std::vector<docker::PullProgress> want = {
      {0, 0, 0, 0},        // nothing announced (l0 already exists)
      {0, 1, 0, 0},        // l1 announced
      {0, 2, 0, 0},        // l2 announced
      {0, 2, 300, 1000},   // l1 downloading (a smaller `current` later does not go back)
      {0, 2, 1000, 1000},  // l1 downloaded (extraction counts nothing)
      {1, 2, 1000, 1000},  // l1 pulled
      {1, 2, 1010, 1020},  // l2 downloading
      {2, 2, 1020, 1020},  // l2 pulled
  };
  CHECK(seen == want);
}

TEST_CASE("pull stream parser: errors end the stream, oversized lines are dropped, cut streams are incomplete") {
  docker::PullStreamParser p;
  p.Feed(R"({"status":"Pulling fs layer","id":"a"})" "\n" R"({"error":"toomanyrequests: rate)");
  p.Feed(R"( limit"})" "\n" R"({"status":"Pull complete","id":"a"})" "\n");
  CHECK(p.progress().layers == 0);  // nothing counts after the error
  CHECK(p.Finish().status().message() == "docker pull: toomanyrequests: rate limit");

  docker::PullStreamParser big;
  big.Feed("{\"status\":\"" + std::string(200000, 'x'));  // a line far over the cap, never buffered whole
  big.Feed("\"}\n" R"({"status":"Pulling fs layer","id":"a"})" "\n");
  CHECK(big.progress().layers_total == 1);
  auto cut = big.Finish();
  REQUIRE(cut.ok());
  CHECK_FALSE(cut->complete);
}

TEST_CASE("pull: progress is reported through a transport without streaming too") {
  Fixture f;
  f.Reply(200, R"({"status":"Pulling fs layer","id":"a"})" "\n"
               R"({"status":"Downloading","progressDetail":{"current":5,"total":9},"id":"a"})" "\n"
               R"({"status":"Pull complete","id":"a"})" "\n"
               R"({"status":"Status: Downloaded newer image for busybox:1"})" "\n");
  std::vector<docker::PullProgress> seen;
  auto r = f.client->Pull("busybox:1", [&](const docker::PullProgress& p) { seen.push_back(p); });
  REQUIRE(r.ok());
  CHECK(r->layers == 1);
  CHECK(r->bytes == 9);
  REQUIRE(seen.size() == 1);  // the whole body at once: one change
  CHECK(seen[0] == docker::PullProgress{1, 1, 9, 9});
  CHECK(f.last().method == "POST");
  CHECK(f.last().path == "/v1.41/images/create?fromImage=busybox&tag=1");
  CHECK(f.last().socket == "/var/run/docker.sock");
}
