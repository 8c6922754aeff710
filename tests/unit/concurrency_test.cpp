// 8 threads x 1000 mixed operations over one Service (run it under the asan preset too).
#include <doctest/doctest.h>

#include <atomic>
#include <random>
#include <thread>

#include "support/test_env.hpp"

using namespace fcwarm;
using namespace fcwarm::testing;

TEST_CASE("8 threads x 1000 mixed operations") {
  TestBed bed([](ServiceOptions& o) {
    o.snapshots.max_snapshots_per_image = 2;
    o.restore.wait_for_creating = std::chrono::milliseconds(50);
    o.snapshots.build_workers = 2;
  });
  auto a = bed.AddImage("a");
  auto b = bed.AddImage("b");
  bed.vmm->script.snapshot_bytes = 4096;
  auto sa = bed.BuildSnapshot(a.id);
  auto sb = bed.BuildSnapshot(b.id);
  std::atomic<int> warm{0}, cold{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::string> mine;
      for (int i = 0; i < 1000; ++i) {
        const auto& img = (rng() % 2) ? a : b;
        const auto& snap = (&img == &a) ? sa : sb;
        switch (rng() % 10) {
          case 0: {
            auto vm = bed.service->engine().Provision({.runtime_image_id = img.id});
            if (!vm.ok()) {
              errors++;
              break;
            }
            (vm->boot_method == BootMethod::kWarm ? warm : cold)++;
            mine.push_back(vm->id);
            break;
          }
          case 1:
            if (!mine.empty()) {
              if (!bed.service->engine().Destroy(mine.back()).ok()) errors++;
              mine.pop_back();
            }
            break;
          case 2:
            if (rng() % 20 == 0) (void)bed.service->snapshots().Rebuild(snap.id);
            else (void)bed.service->health().RecordSuccess(snap.id, snap.generation);
            break;
          case 3:
            if (!bed.service->snapshots().List({}).ok()) errors++;
            break;
          case 4:
            if (!bed.service->snapshots().Get(snap.id).ok()) errors++;
            break;
          case 5:
            if (!bed.service->store().ListEvents({.limit = 20, .newest_first = true}).ok()) errors++;
            break;
          case 6:
            if (!bed.service->engine().List(false).ok()) errors++;
            break;
          case 7:
            if (!bed.service->images().Get(img.id).ok()) errors++;
            break;
          case 8:
            (void)bed.service->snapshots().CollectGarbage();
            break;
          default:
            if (!bed.service->health().Stats(snap.id).ok()) errors++;
            break;
        }
      }
      for (const auto& id : mine)
        if (!bed.service->engine().Destroy(id).ok()) errors++;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors == 0);
  CHECK(warm + cold > 0);
  MESSAGE("warm=" << warm << " cold=" << cold);
  // Everything was released: no live VM, no address, no VM directory.
  (void)bed.service->snapshots().WaitWhileCreating(sa.id, std::chrono::seconds(20));
  (void)bed.service->snapshots().WaitWhileCreating(sb.id, std::chrono::seconds(20));
  CHECK(Eventually([&] { return bed.vmm->live == 0; }));
  CHECK(bed.service->engine().List(false)->empty());
  CHECK(CountEntries(bed.options.restore.vm_dir) == 0);
  // Only current generations remain on disk.
  REQUIRE(bed.service->snapshots().CollectGarbage().ok());
  CHECK(CountEntries(std::filesystem::path(bed.options.snapshots.root_dir) / a.id / sa.id) == 1);
}
