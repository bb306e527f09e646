// The gates' keep step: keep probabilities in, what attention uses and the hard flags out, in
// one elementwise pass (DESIGN.md section 3). On CUDA tensors it is agate's own fused kernel
// (src/gate/cuda/keep_step.cu, when built with AGATE_USE_CUDA); everywhere else its twin, an
// ATen composition (src/gate/keep_step.cpp). Both are one autograd node with the same values.
//
// Per element (b, t, g), with sink = positions[t] < sink_tokens:
//   flag = sink ? 1 : forced >= 0 ? forced : (p > threshold)      (threshold compared in float32)
//   keep = sink ? 1 : mode == kSoft ? p : flag
//   d p  = sink ? 0 : d keep                   (kStraightThrough and kSoft; kHard: no gradient)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace agate {

enum class KeepMode {
  kHard,             // keep = hard flags, no gradient (inference, validation, forced flags)
  kStraightThrough,  // keep = hard flags forward, identity gradient to p (STE)
  kSoft,             // keep = p
};

struct KeepStepResult {
  at::Tensor keep;      // [B, T, Hkv] float32; differentiable w.r.t. p unless kHard
  at::Tensor flags;     // [B, T, Hkv] float32 0/1 (sinks 1), no gradient; kHard: the same tensor as keep
  at::Tensor flag_sum;  // [Hkv] float32: flags summed over B and T (exact below 2^24 per head), no gradient
};

// p: [B, T, Hkv] float32 keep probabilities; positions: [T] integer (moved to p's device if
// elsewhere). forced: -1 (off), 0 or 1 (replaces every non-sink flag). Every output lives on
// p's device. Picks the CUDA kernel for CUDA tensors when agate was built with it, the ATen
// twin otherwise.
KeepStepResult keep_step(const at::Tensor& p, const at::Tensor& positions, double threshold, int64_t sink_tokens,
                         KeepMode mode, int forced = -1);

// The ATen twin alone, on any device (the reference the CUDA kernel is tested against).
// Shapes as keep_step().
KeepStepResult keep_step_reference(const at::Tensor& p, const at::Tensor& positions, double threshold,
                                   int64_t sink_tokens, KeepMode mode, int forced = -1);

// True when this build carries the CUDA kernel (AGATE_USE_CUDA).
bool keep_step_has_cuda_kernel();

}  // namespace agate
