// Status, ids, enum names and the VMM registry.
#include <uuid/uuid.h>

#include <array>
#include <cctype>

#include "fcwarm/container_manager.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/vmm.hpp"

namespace fcwarm {

const std::vector<StatusCodeInfo>& StatusTable() {
  // code, name, HTTP status, Python exception (fcwarm.errors), CLI exit code (0 ok, 1 failure, 2 usage,
  // 3 not found, 4 conflict).
  static const std::vector<StatusCodeInfo> kTable = {
      {StatusCode::kOk, "ok", 200, "", 0},
      {StatusCode::kInvalidArgument, "invalid_argument", 400, "InvalidArgumentError", 2},
      {StatusCode::kNotFound, "not_found", 404, "NotFoundError", 3},
      {StatusCode::kAlreadyExists, "already_exists", 409, "ConflictError", 4},
      {StatusCode::kFailedPrecondition, "failed_precondition", 409, "ConflictError", 4},
      {StatusCode::kResourceExhausted, "resource_exhausted", 429, "ConflictError", 4},
      {StatusCode::kUnavailable, "unavailable", 503, "UnavailableError", 1},
      {StatusCode::kDeadlineExceeded, "deadline_exceeded", 504, "UnavailableError", 1},
      {StatusCode::kInternal, "internal", 500, "Error", 1},
      {StatusCode::kDataLoss, "data_loss", 502, "UnavailableError", 1},
  };
  return kTable;
}

const StatusCodeInfo& StatusInfo(StatusCode code) {
  const auto& table = StatusTable();
  auto i = static_cast<size_t>(code);
  return i < table.size() ? table[i] : table.back();
}

std::string_view StatusCodeName(StatusCode code) { return StatusInfo(code).name; }

Result<StatusCode> ParseStatusCode(std::string_view name) {
  for (const auto& row : StatusTable()) {
    if (row.name == name) return row.code;
  }
  return Status::InvalidArgument("unknown status code name '" + std::string(name.substr(0, 64)) + "'");
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

// ---- ids ---------------------------------------------------------------------

bool Id::IsValid(std::string_view t) {
  if (t.size() != 36) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  if (t[14] != '4') return false;  // version 4
  char v = t[19];                  // RFC 4122 variant: 8, 9, a, b
  return v == '8' || v == '9' || v == 'a' || v == 'b';
}

namespace {
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 64)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  if (text.size() > 64) out += "...";
  return out;
}
}  // namespace

Result<Id> Id::Parse(std::string_view field, std::string_view text) {
  if (!IsValid(text)) {
    return Status::InvalidArgument(std::string(field) + ": '" + Printable(text) +
                                   "' is not a valid id (lower-case UUID v4 text)");
  }
  return Id(std::string(text));
}

Id Id::Generate() {
  uuid_t u;
  uuid_generate_random(u);
  std::array<char, 37> buf{};
  uuid_unparse_lower(u, buf.data());
  return Id(std::string(buf.data()));
}

Status ValidateName(std::string_view field, std::string_view name) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument(std::string(field) + ": '" + Printable(name) + "' " + why);
  };
  if (name.empty()) return Status::InvalidArgument(std::string(field) + ": must not be empty");
  if (name.size() > 63) return bad("is longer than 63 characters");
  if (!std::isalnum(static_cast<unsigned char>(name[0])) || std::isupper(static_cast<unsigned char>(name[0]))) {
    return bad("must start with a lower-case letter or digit");
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return bad("may contain only a-z, 0-9, '.', '_' and '-'");
  }
  if (name.find("..") != std::string_view::npos) return bad("must not contain '..'");
  return Status::Ok();
}

// ---- enum names --------------------------------------------------------------

namespace {
template <typename E, size_t N>
Result<E> ParseEnum(std::string_view what, std::string_view s, const std::array<std::pair<E, std::string_view>, N>& t) {
  for (const auto& [e, n] : t)
    if (n == s) return e;
  std::string allowed;
  for (const auto& [e, n] : t) {
    if (n.empty()) continue;
    if (!allowed.empty()) allowed += ", ";
    allowed += n;
  }
  return Status::InvalidArgument(std::string(what) + ": '" + Printable(s) + "' is not one of " + allowed);
}

constexpr std::array<std::pair<SnapshotState, std::string_view>, 4> kSnapshotStates{{
    {SnapshotState::kCreating, "creating"},
    {SnapshotState::kReady, "ready"},
    {SnapshotState::kUnhealthy, "unhealthy"},
    {SnapshotState::kDeleted, "deleted"},
}};
constexpr std::array<std::pair<BuildPhase, std::string_view>, 12> kPhases{{
    {BuildPhase::kQueued, "queued"},
    {BuildPhase::kFetching, "fetching"},
    {BuildPhase::kBooting, "booting"},
    {BuildPhase::kWaitingRuntime, "waiting_runtime"},
    {BuildPhase::kPreloading, "preloading"},
    {BuildPhase::kParking, "parking"},
    {BuildPhase::kQuiescing, "quiescing"},
    {BuildPhase::kPausing, "pausing"},
    {BuildPhase::kSnapshotting, "snapshotting"},
    {BuildPhase::kVerifying, "verifying"},
    {BuildPhase::kPublishing, "publishing"},
    {BuildPhase::kDone, "done"},
}};
constexpr std::array<std::pair<BootMethod, std::string_view>, 2> kBootMethods{{
    {BootMethod::kWarm, "warm"},
    {BootMethod::kCold, "cold"},
}};
constexpr std::array<std::pair<FallbackReason, std::string_view>, 8> kReasons{{
    {FallbackReason::kNone, ""},
    {FallbackReason::kNoSnapshot, "no_snapshot"},
    {FallbackReason::kSnapshotCreating, "snapshot_creating"},
    {FallbackReason::kSnapshotUnhealthy, "snapshot_unhealthy"},
    {FallbackReason::kIncompatible, "incompatible"},
    {FallbackReason::kCorrupt, "corrupt"},
    {FallbackReason::kRestoreFailed, "restore_failed"},
    {FallbackReason::kVerifyFailed, "verify_failed"},
}};
constexpr std::array<std::pair<VmState, std::string_view>, 7> kVmStates{{
    {VmState::kStarting, "starting"},
    {VmState::kRunning, "running"},
    {VmState::kStopped, "stopped"},
    {VmState::kDestroyed, "destroyed"},
    {VmState::kFailed, "failed"},
    {VmState::kLost, "lost"},
    {VmState::kPooled, "pooled"},
}};
constexpr std::array<std::pair<EventKind, std::string_view>, 7> kEventKinds{{
    {EventKind::kBoot, "boot"},
    {EventKind::kBuild, "build"},
    {EventKind::kHealth, "health"},
    {EventKind::kGc, "gc"},
    {EventKind::kReconcile, "reconcile"},
    {EventKind::kSnapshot, "snapshot"},
    {EventKind::kRepository, "repository"},
}};

template <typename E, size_t N>
std::string_view NameOf(E v, const std::array<std::pair<E, std::string_view>, N>& t) {
  for (const auto& [e, n] : t)
    if (e == v) return n;
  return "unknown";
}
}  // namespace

std::string_view ToString(SnapshotState v) { return NameOf(v, kSnapshotStates); }
std::string_view ToString(BuildPhase v) { return NameOf(v, kPhases); }
std::string_view ToString(BootMethod v) { return NameOf(v, kBootMethods); }
std::string_view ToString(FallbackReason v) { return NameOf(v, kReasons); }
std::string_view ToString(VmState v) { return NameOf(v, kVmStates); }
std::string_view ToString(EventKind v) { return NameOf(v, kEventKinds); }
Result<EventKind> ParseEventKind(std::string_view s) { return ParseEnum("kind", s, kEventKinds); }
Result<SnapshotState> ParseSnapshotState(std::string_view s) { return ParseEnum("state", s, kSnapshotStates); }
Result<BuildPhase> ParseBuildPhase(std::string_view s) { return ParseEnum("phase", s, kPhases); }
Result<BootMethod> ParseBootMethod(std::string_view s) { return ParseEnum("boot_method", s, kBootMethods); }
Result<FallbackReason> ParseFallbackReason(std::string_view s) { return ParseEnum("fallback_reason", s, kReasons); }
Result<VmState> ParseVmState(std::string_view s) { return ParseEnum("vm state", s, kVmStates); }

bool IsTerminal(ContainerState v) {
  return v != ContainerState::kProvisioning && v != ContainerState::kPulling && v != ContainerState::kRunning;
}

std::string RuntimeImage::path() const {
  if (!rootfs_path.empty()) return rootfs_path;
  if (!initrd_path.empty()) return initrd_path;
  return kernel_path;
}

// ---- registry ----------------------------------------------------------------

void VmmRegistry::Add(std::shared_ptr<Vmm> vmm) {
  std::lock_guard lock(mu_);
  auto kind = vmm->Kind();
  vmms_[kind] = std::move(vmm);
}

std::shared_ptr<Vmm> VmmRegistry::Find(std::string_view kind) const {
  std::lock_guard lock(mu_);
  auto it = vmms_.find(kind);
  return it == vmms_.end() ? nullptr : it->second;
}

std::vector<std::string> VmmRegistry::Kinds() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& [k, v] : vmms_) out.push_back(k);
  return out;
}

}  // namespace fcwarm
