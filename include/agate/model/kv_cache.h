// The KV-cache interface the decoder's attention talks to, and a dense reference cache.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace agate {

// A KV cache receives each layer's post-RoPE keys and values for the new tokens, decides what
// to store, and computes the new queries' attention over what it holds plus the new entries.
class KVCache {
 public:
  virtual ~KVCache() = default;

  // Tokens processed so far: the position of the next token.
  virtual int64_t length() const = 0;

  // Layer `layer` sees Tn new tokens at positions [length(), length() + Tn).
  // q: [B, H, Tn, hd]; k, v: [B, Hkv, Tn, hd] (post-RoPE); keep: [B, Tn, Hkv] or undefined.
  // Returns the attention output [B, H, Tn, hd] under masked_attention's visibility rule.
  virtual at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) = 0;

  // Called once after every layer has seen the Tn new tokens.
  virtual void advance(int64_t n_new) = 0;

  // Bytes of K and V currently stored (the memory the cache costs).
  virtual int64_t bytes() const = 0;
};

// Stores every entry (and its keep flag) contiguously: the exact reference any compressed
// cache must reproduce. Per layer: k, v [B, Hkv, T, hd], keep [B, T, Hkv].
class DenseKVCache : public KVCache {
 public:
  explicit DenseKVCache(int64_t num_layers);

  int64_t length() const override { return length_; }
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) override;
  void advance(int64_t n_new) override { length_ += n_new; }
  int64_t bytes() const override;

 private:
  struct Layer {
    at::Tensor k, v, keep;
  };
  std::vector<Layer> layers_;
  int64_t length_ = 0;
};

}  // namespace agate
