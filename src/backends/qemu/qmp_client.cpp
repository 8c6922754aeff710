#include "backends/qemu/qmp_client.hpp"

#include "guest/stream_channel.hpp"

namespace fcwarm::qemu {
namespace json = boost::json;

namespace {
constexpr size_t kMaxQmpLine = 4u << 20;
}

Result<json::object> QmpClient::ReadMessage(guest::Clock::time_point deadline) {
  while (true) {
    auto line = stream_.ReadLine(deadline, kMaxQmpLine);
    if (!line.ok()) return line.status();
    if (line->empty()) continue;
    boost::system::error_code ec;
    json::value v = json::parse(*line, ec);
    if (ec || !v.is_object()) return Status::Unavailable("QMP: malformed message: " + line->substr(0, 200));
    return std::move(v.as_object());
  }
}

Status QmpClient::Connect(const std::string& path, guest::Clock::time_point deadline) {
  stream_.Close();
  auto fd = guest::ConnectUnixStream(path, std::chrono::milliseconds(guest::MsLeft(deadline)));
  if (!fd.ok()) return fd.status().WithContext("QMP");
  stream_ = guest::LineStream(*fd);
  auto greeting = ReadMessage(deadline);
  if (!greeting.ok()) {
    stream_.Close();
    return greeting.status().WithContext("QMP greeting");
  }
  if (!greeting->contains("QMP")) {
    stream_.Close();
    return Status::Unavailable("QMP: unexpected greeting " + json::serialize(*greeting).substr(0, 200));
  }
  auto caps =
      Execute("qmp_capabilities", nullptr, std::chrono::milliseconds(std::max(1, guest::MsLeft(deadline))));
  if (!caps.ok()) {
    stream_.Close();
    return caps.status();
  }
  return Status::Ok();
}

Result<json::value> QmpClient::Execute(const std::string& command, json::value arguments,
                                       std::chrono::milliseconds timeout, int pass_fd) {
  if (!stream_.connected()) return Status::Unavailable("QMP " + command + ": not connected");
  auto deadline = guest::Clock::now() + timeout;
  const int64_t id = next_id_++;
  json::object req{{"execute", command}, {"id", id}};
  if (!arguments.is_null()) req["arguments"] = std::move(arguments);
  std::string line = json::serialize(req);
  line.push_back('\n');
  if (auto st = stream_.WriteAll(line, deadline, pass_fd); !st.ok()) {
    stream_.Close();
    return Status(st.code(), "QMP " + command + ": " + st.message());
  }
  while (true) {
    auto msg = ReadMessage(deadline);
    if (!msg.ok()) {
      // After a timeout the reply may still come; drop the session so it cannot be taken for another's.
      stream_.Close();
      return Status(msg.status().code(), "QMP " + command + ": " + msg.status().message());
    }
    if (msg->contains("event")) {
      if (events_.size() < 1000) events_.push_back(std::move(*msg));
      continue;
    }
    const auto* rid = msg->if_contains("id");
    if (!rid || !rid->is_int64() || rid->as_int64() != id) continue;
    if (const auto* ret = msg->if_contains("return")) return *ret;
    if (const auto* err = msg->if_contains("error"); err && err->is_object()) {
      const auto& e = err->as_object();
      auto str = [&](const char* k) {
        const auto* f = e.if_contains(k);
        return f && f->is_string() ? std::string(f->as_string()) : std::string();
      };
      return Status::FailedPrecondition("QMP " + command + ": " + str("class") + ": " + str("desc"));
    }
    return Status::Unavailable("QMP " + command + ": malformed reply " +
                               json::serialize(*msg).substr(0, 200));
  }
}

}  // namespace fcwarm::qemu
