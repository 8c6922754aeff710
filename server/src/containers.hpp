// Containers over the RestoreEngine: until the Docker runtime lands a container is a VM of its runtime image
// (VmRecord). This class adds background provisioning (202 + poll) on top of the blocking Provision().
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "fcwarm/service.hpp"

namespace fcwarm::server {

/// What POST /v1/containers asks for.
struct ContainerSpec {
  std::string name;                        ///< Required; validated like image names.
  std::string image;                       ///< Runtime image id or name.
  std::vector<std::string> command;        ///< Accepted and echoed; applied once the Docker runtime lands.
  std::map<std::string, std::string> env;  ///< Accepted and echoed; applied once the Docker runtime lands.
  bool wait = false;                       ///< Provision synchronously (201) instead of in the background.
};

/// Thread safety: safe for concurrent use.
class ContainerService {
 public:
  /// Submits a background task; returns false when it cannot be queued (full or shutting down).
  using Runner = std::function<bool(std::function<void()>)>;

  /// \param service Must outlive this object, and so must every task given to `runner`.
  ContainerService(Service& service, Runner runner);

  /// Creates a container. `*waited` tells whether it is running already (wait=true) or provisioning.
  /// \return {"id", "item"} body; InvalidArgument, NotFound (image), ResourceExhausted (queue full), or the
  /// provisioning error when waiting.
  Result<boost::json::object> Create(const ContainerSpec& spec, bool* waited);
  Result<boost::json::object> Get(const std::string& id) const;
  Result<boost::json::array> List(bool include_destroyed) const;
  Result<boost::json::object> Stop(const std::string& id);
  Status Destroy(const std::string& id);
  /// Marks containers whose background task never ran as failed (used at shutdown).
  void FailPending(const std::string& reason);
  /// Containers still provisioning in the background.
  int Provisioning() const;

 private:
  struct Entry {
    std::string id;
    std::string name;
    std::string runtime_image_id;
    std::vector<std::string> command;
    std::map<std::string, std::string> env;
    std::string state = "provisioning";  // provisioning | failed | created
    std::string vm_id;
    std::string error;
    std::string error_code;
    int64_t created_at = 0;
    uint64_t seq = 0;
  };
  boost::json::object Render(const VmRecord& vm, const Entry* entry, const std::string& id) const;
  boost::json::object RenderEntry(const Entry& e) const;
  void Trim();  // requires mu_

  Service& service_;
  Runner runner_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;      // by container id
  std::map<std::string, std::string> by_vm_;  // vm id → container id
  uint64_t seq_ = 0;
};

}  // namespace fcwarm::server
