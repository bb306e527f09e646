// RMSNorm as Hugging Face's Llama computes it: normalised in float32, rounded to the input's
// dtype, then scaled by the weight in that dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace agate {

// x: [..., D]; weight: [D], x's dtype -> weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype).
// On the CPU in float32/bfloat16 with a frozen weight, one fused kernel forward and backward
// (rms_norm_cpu.h); elsewhere (CUDA, or a weight that trains) the ATen formula.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The ATen formula itself (the reference the fused kernel is tested against).
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace agate
