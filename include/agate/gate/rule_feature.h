// The gates' rule feature (gate.rule_feature: attention; README, "Training what is evaluated"):
// what H2O ranks keys by, as an input the gates weight and correct.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace agate {

inline constexpr int64_t kRuleFeatureCount = 2;

// q: [B, H, T, hd], k: [B, Hkv, T, hd] (a layer's queries and keys after RoPE, any float dtype);
// context_end in [1, T]: the queries at positions [0, context_end) are the context's. Returns
// [B, T, Hkv, 2] float32, no gradient, per key j and KV head g:
//   [..., 0] = log(1e-6 + r_jg), r_jg = the attention key j receives from the context's queries
//              in the layer's full-cache causal softmax, summed over queries, averaged over
//              g's query heads (attention_received());
//   [..., 1] = log(max(1, context_end - j)): how many context queries see key j.
// Keys at or after context_end receive nothing (feature 0 is log(1e-6)).
at::Tensor rule_features(const at::Tensor& q, const at::Tensor& k, int64_t context_end);

}  // namespace agate
