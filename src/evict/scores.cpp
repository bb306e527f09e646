// Attention statistics the training-free policies rank keys by (SnapKV, H2O).
#include <ATen/ATen.h>

#include "agate/evict/policy.h"
#include "agate/model/attention.h"
#include "agate/util/error.h"

namespace agate::evict {

namespace {

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
  at::Tensor a = causal_attention_probs(qw, k.to(at::kFloat), T - w).slice(3, 0, T - w); // [Hkv, G, w, T-w]
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
  return reduce_group(attention_received(grouped(q, Hkv), k.to(at::kFloat), T), o);
}

}  // namespace agate::evict
