// Wall-clock timing for benchmarks: medians of repeated runs (these machines are noisy).
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace agate {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `fn` `warmup` times untimed, then `iters` times timed; returns every timed duration (s).
inline std::vector<double> time_runs(const std::function<void()>& fn, int iters, int warmup = 1) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> out;
  for (int i = 0; i < iters; ++i) {
    const double t0 = now_seconds();
    fn();
    out.push_back(now_seconds() - t0);
  }
  return out;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace agate
