// The gated activation of Llama's MLP, as Hugging Face computes it: silu(gate) * up, each op
// rounding to the inputs' dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace agate {

// gate, up: the same shape and dtype -> silu(gate) * up. On the CPU in float32/bfloat16, one
// fused kernel forward and backward (swiglu_cpu.h); elsewhere the ATen formula.
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);

}  // namespace agate
