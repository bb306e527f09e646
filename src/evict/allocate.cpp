// Budget allocation: even splits, Ada-KV's head-wise split and PyramidKV's layer schedule.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "agate/evict/policy.h"
#include "agate/util/error.h"

namespace agate::evict {

namespace {

// Integers b_i <= cap_i summing to min(total, sum cap) that follow the real shares x_i: floors
// first, then +1 by largest fractional part, then whatever caps left over to the heads with the
// largest shares that still have room.
std::vector<int64_t> round_to_total(const std::vector<double>& x, int64_t total, int64_t cap) {
  const size_t n = x.size();
  std::vector<int64_t> b(n);
  int64_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum += b[i] = std::clamp<int64_t>(static_cast<int64_t>(std::floor(x[i])), 0, cap);
  total = std::min<int64_t>(total, cap * static_cast<int64_t>(n));
  std::vector<size_t> by_frac(n), by_share(n);
  std::iota(by_frac.begin(), by_frac.end(), 0);
  by_share = by_frac;
  std::stable_sort(by_frac.begin(), by_frac.end(),
                   [&](size_t a, size_t c) { return x[a] - std::floor(x[a]) > x[c] - std::floor(x[c]); });
  std::stable_sort(by_share.begin(), by_share.end(), [&](size_t a, size_t c) { return x[a] > x[c]; });
  for (size_t i : by_frac) {
    if (sum >= total) break;
    if (b[i] < cap) ++b[i], ++sum;
  }
  while (sum < total) {
    for (size_t i : by_share) {
      if (sum >= total) break;
      if (b[i] < cap) ++b[i], ++sum;
    }
  }
  for (auto it = by_share.rbegin(); sum > total && it != by_share.rend(); ++it) {  // shares summed above total
    const int64_t take = std::min(b[*it], sum - total);
    b[*it] -= take, sum -= take;
  }
  return b;
}

}  // namespace

std::vector<int64_t> split_even(int64_t total, int64_t heads) {
  std::vector<int64_t> b(static_cast<size_t>(heads), total / heads);
  for (int64_t i = 0; i < total % heads; ++i) ++b[static_cast<size_t>(i)];
  return b;
}

std::vector<int64_t> ada_allocate(const at::Tensor& scores, int64_t selectable, double alpha) {
  if (scores.dim() != 2) throw_internal("ada_allocate expects scores [heads, n]");
  if (alpha < 0 || alpha > 1) throw_usage("the Ada-KV safeguard alpha must be in [0, 1]");
  const int64_t heads = scores.size(0), n = scores.size(1);
  selectable = std::clamp<int64_t>(selectable, 0, heads * n);
  std::vector<int64_t> count(static_cast<size_t>(heads), 0);
  if (selectable > 0) {
    at::Tensor top = std::get<1>(scores.reshape({-1}).to(at::kFloat).topk(selectable, 0, true, true)).cpu();
    auto idx = top.accessor<int64_t, 1>();
    for (int64_t i = 0; i < selectable; ++i) ++count[static_cast<size_t>(idx[i] / n)];
  }
  const double mean = static_cast<double>(selectable) / static_cast<double>(heads);
  std::vector<double> x(static_cast<size_t>(heads));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(count[i]) * (1 - alpha) + alpha * mean;
  return round_to_total(x, selectable, n);
}

std::vector<int64_t> pyramid_budgets(int64_t layers, int64_t total, int64_t cap, int64_t beta) {
  if (layers < 1 || beta < 1) throw_usage("pyramid_budgets needs layers >= 1 and beta >= 1");
  total = std::clamp<int64_t>(total, 0, layers * cap);
  const double mean = static_cast<double>(total) / static_cast<double>(layers);
  double lo = mean / static_cast<double>(beta), hi = 2 * mean - lo;
  if (hi > static_cast<double>(cap)) hi = static_cast<double>(cap), lo = 2 * mean - hi;
  std::vector<double> x(static_cast<size_t>(layers), mean);
  if (layers > 1) {
    const double step = (hi - lo) / static_cast<double>(layers - 1);
    for (int64_t l = 0; l < layers; ++l) x[static_cast<size_t>(l)] = hi - static_cast<double>(l) * step;
  }
  return round_to_total(x, total, cap);
}

}  // namespace agate::evict
