#include "agate/model/kv_cache.h"

#include <ATen/ATen.h>

#include "agate/model/attention.h"

namespace agate {

DenseKVCache::DenseKVCache(int64_t num_layers) : layers_(static_cast<size_t>(num_layers)) {}

at::Tensor DenseKVCache::attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) {
  Layer& L = layers_.at(static_cast<size_t>(layer));
  const int64_t B = k.size(0), Hkv = k.size(1), Tn = k.size(2);
  at::Tensor flags = keep.defined() ? keep.detach() : at::ones({B, Tn, Hkv}, k.options());
  if (L.k.defined()) {
    L.k = at::cat({L.k, k.detach()}, 2);
    L.v = at::cat({L.v, v.detach()}, 2);
    L.keep = at::cat({L.keep, flags}, 1);
  } else {
    L.k = k.detach();
    L.v = v.detach();
    L.keep = flags;
  }
  const int64_t T = L.k.size(2);
  auto pos_opts = at::TensorOptions().dtype(at::kLong).device(k.device());
  at::Tensor k_pos = at::arange(0, T, pos_opts);
  at::Tensor q_pos = at::arange(T - Tn, T, pos_opts);
  // Everything kept -> the plain causal path (identical to a cache-free forward).
  const bool all_kept = L.keep.to(at::kFloat).min().item<float>() >= 1.0f;
  return masked_attention(q, L.k, L.v, q_pos, k_pos, all_kept ? at::Tensor() : L.keep, sliding_window,
                          recent_window);
}

int64_t DenseKVCache::bytes() const {
  int64_t n = 0;
  for (const auto& L : layers_)
    if (L.k.defined()) n += (L.k.numel() + L.v.numel()) * L.k.element_size();
  return n;
}

}  // namespace agate
