// The CPU kernels of the fused RMSNorm (rms_norm.cpp). Internal to src/model.
#pragma once

#include <ATen/core/Tensor.h>

namespace agate::kernels {

// x: [N, D] float32 or bfloat16, contiguous; weight: [D] same dtype. Returns out [N, D] (x's
// dtype) = weight * T(x * r) and r [N] float32 = rsqrt(mean(x^2) + eps).
std::pair<at::Tensor, at::Tensor> rms_norm_forward_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);

// The gradient w.r.t. x of the forward above, given g = d loss / d out [N, D] and the saved r:
// with gy = T(g * weight) and xh = x * r: dx = r * (gy - xh * mean(gy * xh)), in x's dtype.
at::Tensor rms_norm_backward_cpu(const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& r);

}  // namespace agate::kernels
