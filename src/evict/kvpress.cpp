// kvpress 0.5.5's definitions of the budgets, PyramidKV's schedule and the SnapKV/Ada-KV
// selections (PolicyOptions::kvpress), written to reproduce its presses operation by
// operation: kvpress/utils.py compute_n_kept, presses/pyramidkv_press.py get_layer_budget,
// presses/scorer_press.py compress, presses/adakv_press.py compress.
#include <ATen/ATen.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "agate/evict/policy.h"
#include "agate/util/error.h"

namespace agate::evict {

namespace {

// SnapKVPress.score's padding: the window's entries score the layer's max + 1, so they are kept
// first. [Hkv, T - window] -> [Hkv, T].
at::Tensor padded(const at::Tensor& scores, int64_t window) {
  const double top = scores.numel() ? scores.max().item<double>() + 1 : 1.0;  // Python: max().item() + 1
  return at::cat({scores, at::full({scores.size(0), window}, top, scores.options())}, 1);
}

// Python's round(): to the nearest integer, halves to even (nearbyint in the default mode).
int64_t py_round(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

}  // namespace

int64_t kvpress_n_kept(int64_t T, double keep) {
  const double compression_ratio = 1.0 - keep;
  if (compression_ratio >= 1.0) return 0;
  return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(T) * (1.0 - compression_ratio)));
}

std::vector<int64_t> kvpress_pyramid(int64_t T, int64_t layers, double capacity, int64_t window, int64_t beta) {
  if (layers < 1 || beta < 1) throw_usage("kvpress_pyramid needs layers >= 1 and beta >= 1");
  const double w = static_cast<double>(window), q_len = static_cast<double>(T);
  const double max_capacity_prompt = w + capacity;
  double min_num = (max_capacity_prompt - w) / static_cast<double>(beta);
  double max_num = (max_capacity_prompt - w) * 2 - min_num;
  if (max_num >= q_len - w) {
    max_num = q_len - w;
    min_num = (max_capacity_prompt - w) * 2 - max_num;
  }
  if (!(q_len >= max_num && max_num >= min_num && min_num >= w)) {
    return std::vector<int64_t>(static_cast<size_t>(layers), std::max<int64_t>(1, py_round(capacity)));
  }
  const double steps = layers > 1 ? (max_num - min_num) / static_cast<double>(layers - 1) : 0.0;
  std::vector<int64_t> out;
  for (int64_t l = 0; l < layers; ++l) out.push_back(py_round(max_num - static_cast<double>(l) * steps));
  return out;
}

at::Tensor kvpress_top_flags(const at::Tensor& scores, int64_t window, const std::vector<int64_t>& head_budgets) {
  const at::Tensor s = padded(scores, window);
  const int64_t Hkv = s.size(0), T = s.size(1);
  at::Tensor f = at::zeros({T, Hkv}, s.options().dtype(at::kBool));
  for (int64_t g = 0; g < Hkv; ++g) {
    const int64_t n = std::clamp<int64_t>(head_budgets.at(static_cast<size_t>(g)), 0, T);
    if (n > 0) f.select(1, g).index_fill_(0, std::get<1>(s[g].topk(n, -1)), true);
  }
  return f;
}

at::Tensor kvpress_ada_flags(const at::Tensor& scores, int64_t window, int64_t layer_budget, double alpha) {
  if (alpha < 0 || alpha > 1) throw_usage("the Ada-KV safeguard alpha must be in [0, 1]");
  at::Tensor s = padded(scores, window);
  const int64_t Hkv = s.size(0), T = s.size(1);
  layer_budget = std::clamp<int64_t>(layer_budget, 0, Hkv * T);
  const int64_t n_kept = layer_budget / Hkv;  // kvpress's per-head count (budgets are Hkv x n_kept)
  int64_t n_safe = static_cast<int64_t>(static_cast<double>(n_kept) * alpha);
  if (alpha > 0) n_safe = n_kept > 0 ? std::max<int64_t>(1, n_safe) : 0;
  if (n_safe > 0) s.scatter_(-1, std::get<1>(s.topk(n_safe, -1)), FLT_MAX);
  // Prune the layer's lowest Hkv (T - n_kept) scores across heads, as kvpress does.
  const int64_t n_pruned = Hkv * T - layer_budget;
  at::Tensor keep = at::ones({Hkv * T}, s.options().dtype(at::kBool));
  if (n_pruned > 0) keep.index_fill_(0, std::get<1>((-s.reshape({-1})).topk(n_pruned, -1)), false);
  return keep.view({Hkv, T}).t().contiguous();
}

}  // namespace agate::evict
