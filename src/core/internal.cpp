#include "core/internal.hpp"

#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <set>
#include <thread>

#include "fcwarm/image_reference.hpp"
#include "store/store_db.hpp"
#include "store/vms.hpp"
#include "util/common.hpp"
#include "util/process.hpp"

namespace fcwarm::internal {

void RecordProcess(Store& store, int pid, const std::string& role, const std::string& owner_id) {
  auto start = util::ProcessStartTime(pid);
  if (!start) return;
  detail::ProcessRecord p{pid, static_cast<uint64_t>(*start), role, owner_id};
  auto st = detail::DbOf(store).Do([&](SQLite::Database& db) { detail::RecordProcess(db, p, util::NowMillis()); });
  if (!st.ok()) spdlog::warn("cannot record process {}: {}", pid, st.ToString());
}

void ForgetProcesses(Store& store, const std::string& owner_id) {
  auto st = detail::DbOf(store).Do([&](SQLite::Database& db) { detail::ForgetProcesses(db, owner_id); });
  if (!st.ok()) spdlog::warn("cannot forget processes of {}: {}", owner_id, st.ToString());
}

void Emit(Store& store, const Event& event) {
  auto id = store.AppendEvent(event);
  if (!id.ok()) spdlog::error("cannot record event {}: {}", ToString(event.kind), id.status().ToString());
}

Result<GuestInfo> WaitForAgent(Vm& vm, std::chrono::milliseconds timeout, std::chrono::milliseconds poll,
                               const CancelFn& cancelled) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  Status last = Status::DeadlineExceeded("guest agent did not answer within " + std::to_string(timeout.count()) + " ms");
  while (true) {
    if (cancelled && cancelled()) return Status::Unavailable("cancelled while waiting for the guest agent");
    if (!vm.IsAlive()) return Status::Unavailable("VMM process exited while waiting for the guest agent");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    auto r = vm.guest().Ping(std::min(left, std::chrono::milliseconds(2000)));
    if (r.ok()) return r;
    if (r.status().code() == StatusCode::kDataLoss) return r;  // a guest that broke the protocol: no retry
    last = r.status();
    std::this_thread::sleep_for(std::min(poll, left));
  }
  return Status::DeadlineExceeded("guest agent did not answer within " + std::to_string(timeout.count()) +
                                  " ms (last error: " + last.message() + ")");
}

Status WaitForRuntime(Vm& vm, const RuntimeCheck& check, std::chrono::milliseconds timeout,
                      std::chrono::milliseconds poll, const CancelFn& cancelled) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last = "not checked";
  while (true) {
    if (cancelled && cancelled()) return Status::Unavailable("cancelled while waiting for the runtime");
    if (!vm.IsAlive()) return Status::Unavailable("VMM process exited while waiting for the runtime");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    auto r = vm.guest().RuntimeReady(check, std::min(left, std::chrono::milliseconds(10000)));
    if (r.ok() && r->ready) return Status::Ok();
    if (!r.ok() && r.status().code() == StatusCode::kDataLoss) return r.status();
    last = r.ok() ? r->detail : r.status().message();
    std::this_thread::sleep_for(std::min(poll, left));
  }
  return Status::DeadlineExceeded("runtime check '" + check.kind + "' did not pass within " +
                                  std::to_string(timeout.count()) + " ms (last: " + last + ")");
}

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(out.data() + got, n - got, 0);
    if (r <= 0) continue;
    got += static_cast<size_t>(r);
  }
  return out;
}

Result<std::vector<std::string>> CheckPreloadList(const std::vector<std::string>& refs) {
  if (refs.size() > kMaxPreloadImages) {
    return Status::InvalidArgument("preload_images: more than " + std::to_string(kMaxPreloadImages) + " images");
  }
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < refs.size(); ++i) {
    const std::string field = "preload_images[" + std::to_string(i) + "]";
    auto ref = ParseImageReference(refs[i], field);
    if (!ref.ok()) return ref.status();
    if (!seen.insert(ref->Normalized()).second) {
      return Status::InvalidArgument(field + ": '" + refs[i] + "' is listed twice");
    }
    out.push_back(ref->str());
  }
  return out;
}

}  // namespace fcwarm::internal
