// Helpers shared by the benchmark programs.
#pragma once

#include <algorithm>
#include <vector>

namespace fcwarm::bench {

// The p-th percentile (nearest rank, 0-100) of the samples; 0 for none.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

}  // namespace fcwarm::bench
