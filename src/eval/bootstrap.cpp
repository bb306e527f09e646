#include "agate/eval/bootstrap.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "agate/util/error.h"

namespace agate::eval {

double SampleParts::metric(const std::vector<int64_t>& idx) const {
  double n = 0, d = 0;
  for (int64_t i : idx) n += num[static_cast<size_t>(i)], d += den[static_cast<size_t>(i)];
  const double r = d > 0 ? n / d : 0;
  return exp ? std::exp(r) : r;
}

double SampleParts::metric() const {
  std::vector<int64_t> all(num.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  return metric(all);
}

Interval paired_bootstrap(const SampleParts& a, const SampleParts& b, int64_t resamples, uint64_t seed) {
  const size_t n = a.num.size();
  if (n == 0 || b.num.size() != n || a.den.size() != n || b.den.size() != n || resamples < 1) {
    throw_usage("paired_bootstrap: both policies need the same, non-empty set of samples");
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, static_cast<int64_t>(n) - 1);
  std::vector<int64_t> idx(n);
  std::vector<double> diffs(static_cast<size_t>(resamples));
  for (auto& d : diffs) {
    for (auto& i : idx) i = pick(rng);
    d = a.metric(idx) - b.metric(idx);
  }
  std::sort(diffs.begin(), diffs.end());
  auto at = [&](double q) {
    const double pos = q * static_cast<double>(diffs.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, diffs.size() - 1);
    return diffs[lo] + (pos - static_cast<double>(lo)) * (diffs[hi] - diffs[lo]);
  };
  return {at(0.025), at(0.975)};
}

}  // namespace agate::eval
