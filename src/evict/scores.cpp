// Attention statistics the training-free policies rank keys by (SnapKV, H2O).
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "agate/evict/policy.h"
#include "agate/util/error.h"

namespace agate::evict {

namespace {

// Softmax attention of queries at positions [first, first + Tq) over keys [0, T), causal.
// q: [Hkv, G, Tq, hd] float32, k: [Hkv, T, hd] float32 -> [Hkv, G, Tq, T].
at::Tensor causal_probs(const at::Tensor& q, const at::Tensor& k, int64_t first) {
  const int64_t Tq = q.size(2), T = k.size(1), hd = q.size(3);
  at::Tensor s = at::matmul(q, k.unsqueeze(1).transpose(-1, -2)) / std::sqrt(static_cast<double>(hd));
  const auto pos = q.options().dtype(at::kLong);
  at::Tensor qp = at::arange(first, first + Tq, pos).view({Tq, 1}), kp = at::arange(0, T, pos).view({1, T});
  s.masked_fill_(kp > qp, -std::numeric_limits<float>::infinity());
  return at::softmax(s, -1);
}

// [Hkv, G, n] -> [Hkv, n]: a KV head's score from its query group.
at::Tensor reduce_group(const at::Tensor& x, const PolicyOptions& o) {
  return o.gqa == GqaReduce::Mean ? x.mean(1) : std::get<0>(x.max(1));
}

at::Tensor grouped(const at::Tensor& q, int64_t Hkv) {  // [H, T, hd] -> [Hkv, G, T, hd] float32
  return q.to(at::kFloat).reshape({Hkv, q.size(0) / Hkv, q.size(1), q.size(2)});
}

}  // namespace

at::Tensor snapkv_scores(const at::Tensor& q, const at::Tensor& k, const PolicyOptions& o) {
  const int64_t T = k.size(1), Hkv = k.size(0), w = o.window;
  check_policy_options(o);
  if (w >= T) throw_usage("the SnapKV window must be shorter than the context (" + std::to_string(T) + " tokens)");
  at::Tensor qw = grouped(q, Hkv).slice(2, T - w, T);                         // [Hkv, G, w, hd]
  at::Tensor a = causal_probs(qw, k.to(at::kFloat), T - w).slice(3, 0, T - w); // [Hkv, G, w, T-w]
  const int64_t pad = o.kernel / 2;
  if (o.kvpress) {  // SnapKVPress.score: mean over the window, avg-pooled per query head, then the GQA mean
    const int64_t G = a.size(1), n = T - w;
    at::Tensor m = a.mean(2).reshape({1, Hkv * G, n});
    return at::avg_pool1d(m, {o.kernel}, {1}, {pad})[0].view({Hkv, G, n}).mean(1);
  }
  at::Tensor s = reduce_group(a.sum(2), o);                                    // [Hkv, T-w]
  if (o.kernel == 1) return s;
  if (o.pooling == Pooling::Max) return at::max_pool1d(s.unsqueeze(0), {o.kernel}, {1}, {pad})[0];
  return at::avg_pool1d(s.unsqueeze(0), {o.kernel}, {1}, {pad})[0];
}

at::Tensor h2o_scores(const at::Tensor& q, const at::Tensor& k, const PolicyOptions& o) {
  const int64_t T = k.size(1), Hkv = k.size(0);
  at::Tensor qg = grouped(q, Hkv), kf = k.to(at::kFloat);
  at::Tensor acc = at::zeros({Hkv, qg.size(1), T}, qg.options());
  constexpr int64_t kBlock = 256;  // query rows per block: bounds the [Hkv, G, rows, T] maps
  for (int64_t s = 0; s < T; s += kBlock) {
    const int64_t e = std::min(T, s + kBlock);
    acc += causal_probs(qg.slice(2, s, e), kf, s).sum(2);
  }
  return reduce_group(acc, o);
}

}  // namespace agate::evict
