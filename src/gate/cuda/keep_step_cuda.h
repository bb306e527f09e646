// The CUDA side of keep_step() (gate-internal header; only compiled in with AGATE_USE_CUDA).
// Both functions enqueue on the current CUDA stream of the tensors' device and never wait
// for the device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "agate/gate/keep_step.h"

namespace agate::gate_cuda {

// p: [B, T, Hkv] float32 contiguous, on a CUDA device; positions: [T] int64 contiguous, same
// device. -> keep, flags: [B, T, Hkv] float32 (kHard: one tensor), flag_sum: [Hkv] float32.
// One kernel launch (plus the zero fill of flag_sum).
KeepStepResult keep_step_forward(const at::Tensor& p, const at::Tensor& positions, double threshold,
                                 int64_t sink_tokens, KeepMode mode, int forced);

// dkeep: [B, T, Hkv] float32 (any strides), positions: [T] int64 on its device
// -> dp: [B, T, Hkv] float32, dkeep with the sink positions zeroed (one launch; none and dkeep
// itself when sink_tokens <= 0).
at::Tensor keep_step_backward(const at::Tensor& dkeep, const at::Tensor& positions, int64_t sink_tokens);

}  // namespace agate::gate_cuda
