// The CPU row kernel of the LM loss fused with the head (linear_cross_entropy.cpp): one chunk
// of logits in, per-row negative log-likelihoods and the logits' gradient out, each row read
// into an L1-sized float buffer once. Internal to src/gate.
#pragma once

#include <ATen/core/Tensor.h>

namespace agate::kernels {

// logits: [n, V] float32 or bfloat16, contiguous, on the CPU; targets: [n] int64 in [0, V);
// coef: [n] float32 (d loss / d nll of each row). Returns nll [n] float32
// (logsumexp(row) - row[target]) and, when `grad` is defined ([n, V], logits' dtype,
// contiguous), writes (softmax(row) - onehot(target)) * coef into it. `grad` may be `logits`
// itself (each row is read whole before its gradient is written): the fused loss does that, so a
// chunk's gradient reuses its logits' cache-warm memory instead of a second [n, V] buffer.
at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& coef,
                              const at::Tensor& grad);

}  // namespace agate::kernels
