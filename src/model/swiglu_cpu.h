// The CPU kernels of the fused SwiGLU (swiglu.cpp). Internal to src/model.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace agate::kernels {

// g, u: contiguous, same shape, float32 or bfloat16 (T). Returns T(T(silu(g)) * u), silu in
// float32 as ATen computes it.
at::Tensor swiglu_forward_cpu(const at::Tensor& g, const at::Tensor& u);

// Given dy = d loss / d out: {dg, du} with a = T(silu(g)), du = T(dy * a), da = T(dy * u),
// dg = T(da * s * (1 + g * (1 - s))), s = sigmoid(g): the roundings of ATen's autograd formula.
std::pair<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& dy, const at::Tensor& g, const at::Tensor& u);

}  // namespace agate::kernels
