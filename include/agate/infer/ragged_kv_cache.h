// A ragged per-head KV cache: each (layer, KV head) stores only the entries its gate kept, so
// eviction turns into real memory savings. Batch size 1 (as Ada-KV's kernels).
//
// Layout per layer and KV head: keys and values [n, head_dim] plus each entry's position and
// the position after which it expires (kept entries never expire; an evicted token survives
// only while it is inside gate.recent_window, or while Mistral's sliding window reaches it).
// Attention over it equals the training-time masked attention (masked_attention) exactly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "agate/model/kv_cache.h"

namespace agate {

class RaggedKVCache : public KVCache {
 public:
  explicit RaggedKVCache(int64_t num_layers);

  int64_t length() const override { return length_; }
  // q: [1, H, Tn, hd]; k, v: [1, Hkv, Tn, hd]; keep: [1, Tn, Hkv] (> 0.5 = kept) or undefined.
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) override;
  void advance(int64_t n_new) override { length_ += n_new; }
  // Stores the entries a policy chose from a full prefill of the tokens at positions
  // [length(), length() + T): k, v [Hkv, T, hd]; keep [T, Hkv] bool. Kept entries never expire.
  // Call for every layer, then advance(T).
  void insert(int64_t layer, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep);
  // Bytes of stored K and V: sum over layers and heads of entries x head_dim x 2 x dtype size.
  int64_t bytes() const override;

  // Entries stored at (layer, KV head), and their positions (for --show-evictions).
  int64_t entries(int64_t layer, int64_t head) const;
  std::vector<int64_t> positions(int64_t layer, int64_t head) const;
  int64_t total_entries() const;

 private:
  struct Head {
    at::Tensor k, v;                 // [n, hd]
    std::vector<int64_t> pos;        // position of each entry
    std::vector<int64_t> expires;    // last query position that may still see it (INT64_MAX = kept)
  };
  std::vector<std::vector<Head>> layers_;  // [layer][kv head]
  int64_t length_ = 0;
  int64_t element_size_ = 4;
};

}  // namespace agate
