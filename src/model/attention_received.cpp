// The full-cache attention statistics of include/agate/model/attention.h: what H2O and SnapKV
// rank keys by, and the gates' rule feature (gate.rule_feature: attention).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "agate/model/attention.h"

namespace agate {

at::Tensor causal_attention_probs(const at::Tensor& q, const at::Tensor& k, int64_t first) {
  const int64_t Tq = q.size(-2), T = k.size(-2), hd = q.size(-1);
  at::Tensor s = at::matmul(q, k.unsqueeze(-3).transpose(-1, -2)) / std::sqrt(static_cast<double>(hd));
  const auto pos = q.options().dtype(at::kLong);
  at::Tensor qp = at::arange(first, first + Tq, pos).view({Tq, 1}), kp = at::arange(0, T, pos).view({1, T});
  s.masked_fill_(kp > qp, -std::numeric_limits<float>::infinity());
  return at::softmax(s, -1);
}

at::Tensor attention_received(const at::Tensor& q, const at::Tensor& k, int64_t n_queries) {
  std::vector<int64_t> shape = q.sizes().vec();
  shape.erase(shape.end() - 2, shape.end());
  shape.push_back(k.size(-2));
  at::Tensor acc = at::zeros(shape, q.options());
  constexpr int64_t kBlock = 256;  // query rows per block: bounds the [..., G, rows, T] maps
  for (int64_t s = 0; s < n_queries; s += kBlock) {
    const int64_t e = std::min(n_queries, s + kBlock);
    acc += causal_attention_probs(q.slice(-2, s, e), k, s).sum(-2);
  }
  return acc;
}

}  // namespace agate
