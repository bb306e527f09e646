// Rotary position embeddings in Hugging Face's rotate-half convention, with default, linear
// and llama3 frequency scaling.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <utility>

#include "agate/model/config.h"

namespace agate {

class Rope {
 public:
  // `head_dim` defaults to the model's; the gates use the same scaling with their own width.
  explicit Rope(const ModelConfig& config, int64_t head_dim = 0);

  // positions: [T] int64 -> (cos, sin), each [T, head_dim] in `dtype`, computed in float32
  // (as HF does) and then cast.
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& positions, c10::ScalarType dtype) const;
  // Keeps the frequency table on `device` (cos_sin on positions elsewhere still works, with a copy).
  void to(c10::Device device) { inv_freq_ = inv_freq_.to(device); }

  // x: [B, T, H, head_dim]; cos, sin: [T, head_dim] -> x * cos + rotate_half(x) * sin.
  static at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

  const at::Tensor& inv_freq() const { return inv_freq_; }  // [head_dim / 2] float32
  int64_t head_dim() const { return head_dim_; }

 private:
  int64_t head_dim_;
  at::Tensor inv_freq_;
};

}  // namespace agate
