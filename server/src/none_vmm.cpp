#include "none_vmm.hpp"

#include <thread>

namespace fcwarm::server {
namespace {

class NoneVmm final : public Vmm {
 public:
  explicit NoneVmm(std::chrono::milliseconds delay) : delay_(delay) {}
  std::string Kind() const override { return "none"; }
  Result<std::map<std::string, std::string>> HostCompatibility() override {
    return std::map<std::string, std::string>{{"vmm", "none"}};
  }
  Result<std::unique_ptr<Vm>> ColdBoot(const LaunchSpec&) override {
    std::this_thread::sleep_for(delay_);
    return Status::Unavailable("backend 'none' cannot start VMs (fcwarm-server runs without a hypervisor)");
  }
  Result<std::unique_ptr<Vm>> Restore(const LaunchSpec&, const std::string&) override {
    std::this_thread::sleep_for(delay_);
    return Status::Unavailable("backend 'none' cannot restore VMs (fcwarm-server runs without a hypervisor)");
  }

 private:
  std::chrono::milliseconds delay_;
};

}  // namespace

std::unique_ptr<Vmm> MakeNoneVmm(std::chrono::milliseconds delay) { return std::make_unique<NoneVmm>(delay); }

}  // namespace fcwarm::server
