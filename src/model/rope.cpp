#include "agate/model/rope.h"

#include <ATen/ATen.h>

#include <cmath>

namespace agate {

Rope::Rope(const ModelConfig& c, int64_t head_dim) : head_dim_(head_dim > 0 ? head_dim : c.head_dim) {
  // inv_freq[i] = theta^(-2i/d), as HF computes it: arange(0, d, 2) in int64, then float32.
  at::Tensor exponents = at::arange(0, head_dim_, 2, at::kLong).to(at::kFloat) / static_cast<float>(head_dim_);
  inv_freq_ = 1.0 / at::pow(static_cast<float>(c.rope_theta), exponents);
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "linear") {
    inv_freq_ = inv_freq_ / static_cast<float>(s.factor);
  } else if (s.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
    // them interpolated smoothly.
    const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq_;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq_ / s.factor, inv_freq_);
    at::Tensor smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq_ = at::where(medium, smoothed, scaled).to(at::kFloat);
  }
}

std::pair<at::Tensor, at::Tensor> Rope::cos_sin(const at::Tensor& positions, c10::ScalarType dtype) const {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(1) * inv_freq_.to(positions.device()).unsqueeze(0);  // [T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                                        // [T, d]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor Rope::apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  at::Tensor c = cos.unsqueeze(1);  // [T, 1, d] broadcasts over [B, T, H, d]
  at::Tensor s = sin.unsqueeze(1);
  return x * c + rotated * s;
}

}  // namespace agate
