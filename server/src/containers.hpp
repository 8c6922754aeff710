// The REST face of fcwarm::ContainerManager: JSON rendering and background provisioning (202 + poll). Every
// decision (warm/cold, container create/start, state) lives in the library.
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "fcwarm/service.hpp"

namespace fcwarm::server {

/// Thread safety: safe for concurrent use.
class ContainerService {
 public:
  /// Submits a background task; returns false when it cannot be queued (full or shutting down).
  using Runner = std::function<bool(std::function<void()>)>;

  /// \param service Must outlive this object, and so must every task given to `runner`.
  ContainerService(Service& service, Runner runner);

  /// Creates a container: recorded at once, started in the background, or synchronously when `wait`.
  /// \return {"id", "item"}; the library's validation errors; ResourceExhausted (queue full); the start
  /// error when waiting.
  Result<boost::json::object> Create(const ContainerRequest& request, bool wait);
  Result<boost::json::object> Get(const std::string& id);
  Result<boost::json::array> List(bool include_destroyed);
  Result<boost::json::object> Stop(const std::string& id);
  Result<boost::json::object> Wait(const std::string& id, std::chrono::milliseconds timeout);
  Result<boost::json::object> Logs(const std::string& id);
  Status Destroy(const std::string& id);
  /// Marks containers whose background task never ran as failed (used at shutdown).
  void FailPending(const std::string& reason);

  /// The JSON item of a container (the REST representation).
  static boost::json::object Render(const ContainerRecord& c);

 private:
  Service& service_;
  Runner runner_;
  mutable std::mutex mu_;
  std::set<std::string> queued_;  // prepared, handed to the runner, not started yet
};

}  // namespace fcwarm::server
