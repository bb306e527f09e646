// Paired bootstrap confidence intervals for the difference of two policies' metrics over the
// same samples (resampling samples, not tokens, with one fixed seed).
#pragma once

#include <cstdint>
#include <vector>

namespace agate::eval {

// One policy's per-sample parts: the metric over a set of samples S is
// transform(sum_{i in S} num[i] / sum_{i in S} den[i]); perplexity: num = summed NLL,
// den = tokens, exp; accuracy: num = correct (0/1), den = 1, identity.
struct SampleParts {
  std::vector<double> num, den;
  bool exp = false;
  double metric() const;                             // over every sample
  double metric(const std::vector<int64_t>& idx) const;  // over a resample (indices may repeat)
};

struct Interval {
  double lo = 0, hi = 0;
  bool excludes_zero() const { return lo > 0 || hi < 0; }
};

// The 95% percentile interval of metric(a) - metric(b) over `resamples` paired resamples
// (the same sample indices for both). a and b must have the same number of samples.
Interval paired_bootstrap(const SampleParts& a, const SampleParts& b, int64_t resamples = 2000, uint64_t seed = 1234);

}  // namespace agate::eval
