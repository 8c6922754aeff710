// A node that takes one build lock and holds it until it is killed (coord_test's "killed node"):
//   coord_holder URL NODE_ID NAME TTL_S
// Prints "acquired <lease id>" once it holds the lock, "busy <holder>" (exit 2) when another node holds it,
// "lost <why>" (exit 3) when it loses the lock, "error <status>" (exit 1) on an error.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "coord/coordination_url.hpp"
#include "coord/single_flight.hpp"

using namespace fcwarm::coord;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: coord_holder URL NODE_ID NAME TTL_S\n");
    return 64;
  }
  auto config = ParseCoordinationUrl(argv[1]);
  if (!config.ok()) {
    std::printf("error %s\n", config.status().ToString().c_str());
    return 1;
  }
  auto flight = SingleFlight::Create(*config, argv[2]);
  if (!flight.ok()) {
    std::printf("error %s\n", flight.status().ToString().c_str());
    return 1;
  }
  auto r = (*flight)->Acquire(argv[3], std::chrono::seconds(std::atoi(argv[4])));
  if (!r.ok()) {
    std::printf("error %s\n", r.status().ToString().c_str());
    return 1;
  }
  if (r->outcome != AcquireOutcome::kAcquired) {
    std::printf("busy %s\n", r->holder.c_str());
    return 2;
  }
  std::printf("acquired %lld\n", static_cast<long long>(r->lock->lease_id()));
  std::fflush(stdout);
  while (!r->lock->lost()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::printf("lost %s\n", r->lock->lost_reason().ToString().c_str());
  return 3;
}
