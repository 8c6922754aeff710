// A scripted VMM test double with failure injection. Used only by tests; never by the library.
//
// Each VM is backed by a real host process (`sleep`), so pids, liveness and "the VMM process died" are real.
// Snapshots are real files (a pseudo memory image + a state file) so checksums and corruption are real.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "fcwarm/vmm.hpp"

namespace fcwarm::testing {

struct FakeScript {
  std::atomic<int> fail_cold_boots{0};       // next N cold boots fail
  std::atomic<int> fail_restores{0};         // next N restores fail
  std::atomic<int> fail_verifies{0};         // next N restored clones report runtime not ready (forever)
  std::atomic<int> fail_snapshots{0};        // next N snapshots fail (build crashes midway)
  std::atomic<int> kill_after_restore{0};    // next N restored VMM processes die right after Restore returns
  std::atomic<int> build_delay_ms{0};        // extra time a cold boot takes before returning
  std::atomic<int> restore_delay_ms{0};      // extra time a restore takes
  std::atomic<int> snapshot_bytes{64 * 1024};  // size of the fake memory file
  std::atomic<int> fail_docker{0};           // next N Docker API requests fail (agent unreachable)
  std::atomic<int> violate_docker{0};        // next N Docker API requests: the guest breaks the protocol (DataLoss)
  std::atomic<int> violate_exec{0};          // next N execs: the guest breaks the protocol (DataLoss)
  std::atomic<int> snapshots_no_space{0};    // next N snapshots run out of disk space writing memory
  std::atomic<int> restores_no_space{0};     // next N restores cannot create the clone's overlay (disk full)
  std::atomic<int> cold_boots_no_space{0};   // next N cold boots cannot create the VM's overlay (disk full)
};

class FakeVmm : public Vmm {
 public:
  explicit FakeVmm(std::string kind = "fake");
  std::string Kind() const override { return kind_; }
  Result<std::map<std::string, std::string>> HostCompatibility() override;
  Result<std::unique_ptr<Vm>> ColdBoot(const LaunchSpec& spec) override;
  Result<std::unique_ptr<Vm>> Restore(const LaunchSpec& spec, const std::string& snapshot_dir) override;

  FakeScript script;
  void SetHostVersion(const std::string& v);

  std::atomic<int> cold_boots{0};
  std::atomic<int> restores{0};
  std::atomic<int> snapshots{0};
  std::atomic<int> live{0};  // VM objects alive
  std::atomic<int> max_live{0};
  std::atomic<int> docker_requests{0};  // Docker API requests served by the fake daemons
  std::atomic<int> pulls{0};            // image pulls the fake daemons were asked for (clones of a snapshot
                                        // start with the images its daemon had)
  // Images the fake daemons can pull (references as Docker is asked for them: "nginx:alpine"); guarded by
  // pull_mu.
  std::set<std::string> pullable{"nginx:alpine"};
  // Called after each line of a streamed Docker body (GuestChannel::DockerStream) with its number (1-based);
  // guarded by pull_mu.
  std::function<void(size_t)> on_stream_line;
  std::mutex pull_mu;

  // Hostnames set through identity, by vm id.
  std::map<std::string, std::string> identities() const;
  void NoteIdentity(const std::string& vm_id, const std::string& hostname);
  // The last identity request of each VM (dns, docker settings, ...), and the network each VM was launched with.
  void NoteIdentityRequest(const std::string& vm_id, const IdentityRequest& r);
  std::map<std::string, IdentityRequest> identity_requests() const;
  std::map<std::string, NetworkIdentity> networks() const;
  void NoteLive(int delta);

 private:
  Result<std::unique_ptr<Vm>> Start(const LaunchSpec& spec, bool restored, bool verify_fails,
                                    const std::set<std::string>& images);
  std::string kind_;
  mutable std::mutex mu_;
  std::string host_version_ = "1.0";
  std::map<std::string, std::string> identities_;
  std::map<std::string, IdentityRequest> identity_requests_;
  std::map<std::string, NetworkIdentity> networks_;
};

}  // namespace fcwarm::testing
