// The REST face of fcwarm::ContainerManager: JSON rendering. Every decision (warm/cold, container create/start,
// state, the background start queue) lives in the library.
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "fcwarm/service.hpp"

namespace fcwarm::server {

/// Thread safety: safe for concurrent use.
class ContainerService {
 public:
  /// \param service Must outlive this object.
  explicit ContainerService(Service& service);

  /// Creates a container: synchronously when `wait` (ContainerManager::Create), else recorded at once and
  /// started in the background (ContainerManager::CreateAsync).
  /// \return The container item; the library's validation errors; ResourceExhausted (queue full); the start
  /// error when waiting.
  Result<boost::json::object> Create(const ContainerRequest& request, bool wait);
  Result<boost::json::object> Get(const std::string& id);
  Result<boost::json::array> List(bool include_destroyed);
  Result<boost::json::object> Stop(const std::string& id);
  Result<boost::json::object> Wait(const std::string& id, std::chrono::milliseconds timeout);
  Result<boost::json::object> Logs(const std::string& id);
  Status Destroy(const std::string& id);

  /// The JSON item of a container (the REST representation).
  static boost::json::object Render(const ContainerRecord& c);

 private:
  Service& service_;
};

}  // namespace fcwarm::server
