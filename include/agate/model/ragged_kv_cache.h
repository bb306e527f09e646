// A ragged per-head KV cache: each (layer, KV head) stores only the entries its gate kept (and
// the evicted ones a later query may still see), so eviction turns into real memory savings.
// Batch size 1 (as Ada-KV's kernels). Inference only: stored K/V are detached.
//
// Layout, per layer, all on the K/V's device: K, V [Hkv, cap, hd] in the model dtype; pos and
// expires [Hkv, cap] int64 (the last query position that may see the entry; INT64_MAX = kept);
// len [Hkv] int64, the entries of each head (slots [0, len[g]) of row g, in position order).
// The host knows only cap and an upper bound on max(len). attend() runs one batched attention
// per layer and chunk over every KV head (GQA as [Hkv, G*Tn, hd] rows, K/V never repeated): the
// stored slots up to that bound plus the chunk's new tokens, written into the buffers first,
// under a visibility mask [Hkv, Tn, bound + Tn] (slot < len, causal, expiry, sliding window);
// it equals the training-time masked attention (masked_attention). A decode step (Tn == 1)
// reads nothing back to the host unless the capacity runs out; then, and once after every
// multi-token chunk, the entries no later query can see (expired, or outside the sliding
// window) are compacted away on the device and max(len) is read once to size the buffers.
//
// Copying a cache clones its buffers: the copy evolves independently of the original.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "agate/model/kv_cache.h"

namespace agate {

class RaggedKVCache : public KVCache {
 public:
  explicit RaggedKVCache(int64_t num_layers);
  RaggedKVCache(const RaggedKVCache& other);  // deep: clones the buffers
  RaggedKVCache& operator=(const RaggedKVCache& other);
  RaggedKVCache(RaggedKVCache&&) noexcept = default;
  RaggedKVCache& operator=(RaggedKVCache&&) noexcept = default;

  int64_t length() const override { return length_; }
  // q: [1, H, Tn, hd]; k, v: [1, Hkv, Tn, hd]; keep: [1, Tn, Hkv] (> 0.5 = kept) or undefined.
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) override;
  void advance(int64_t n_new) override { length_ += n_new; }
  // Stores the entries a policy chose from a full prefill of the tokens at positions
  // [length(), length() + T): k, v [Hkv, T, hd]; keep [T, Hkv] bool. Kept entries never expire.
  // Call for every layer, then advance(T).
  void insert(int64_t layer, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep);
  // Bytes of the live K and V entries (those the next query may see): sum over layers and heads
  // of entries x head_dim x 2 x dtype size. The buffers' capacity is larger (geometric growth,
  // dead entries awaiting compaction): capacity_bytes(). Both read the device.
  int64_t bytes() const override;
  int64_t capacity_bytes() const;

  // Live entries at (layer, KV head), and their positions (for --show-evictions). Read the device.
  int64_t entries(int64_t layer, int64_t head) const;
  std::vector<int64_t> positions(int64_t layer, int64_t head) const;
  int64_t total_entries() const;

 private:
  struct Layer {
    at::Tensor k, v;          // [Hkv, cap, hd]
    at::Tensor pos, expires;  // [Hkv, cap] int64
    at::Tensor len;           // [Hkv] int64
    int64_t cap = 0;          // host: slots per head
    int64_t bound = 0;        // host: an upper bound on max(len)
  };
  void init_layer(Layer& L, const at::Tensor& k) const;
  void grow(Layer& L, int64_t need) const;
  void compact(Layer& L, int64_t next, int64_t extra) const;
  at::Tensor live(const Layer& L, int64_t next) const;  // [Hkv, cap] bool
  std::vector<Layer> layers_;
  int64_t length_ = 0;
  int64_t window_ = 0;  // the sliding window attend() was last given (0: none)
};

}  // namespace agate
