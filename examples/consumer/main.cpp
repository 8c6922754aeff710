// Opens an in-memory store through the installed library and prints the version and schema version.
#include <fcwarm/fcwarm.hpp>

#include <iostream>

int main() {
  auto store = fcwarm::Store::Open({.path = ":memory:"});
  if (!store.ok()) {
    std::cerr << store.status().ToString() << "\n";
    return 1;
  }
  std::cout << "fcwarm " << fcwarm::Version() << " schema " << (*store)->SchemaVersion() << "\n";
  return 0;
}
