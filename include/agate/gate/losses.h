// The training objective: LM loss (masked), a sparsity regulariser on the gates' keep ratios,
// and optional distillation from the frozen base model.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "agate/util/choices.h"

namespace agate {

// logits: [B, T, V]; targets: [B, T] int64; weights: [B, T] float (1 = counted).
// Returns the weighted mean cross-entropy (float32 scalar) and the weight sum via `count`.
at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& weights,
                   double* count = nullptr);

// The same loss from the final (normed) hidden states and the LM head, fused: the logits
// hidden @ head^T are made one chunk of about `chunk_elements` logits at a time, reduced to the
// loss and differentiated in the forward, so no [N, V] tensor is kept (the gradient w.r.t.
// hidden, [N, D], is; w.r.t. head only when it requires grad). Equals
// lm_loss(at::linear(hidden, head), targets, weights) up to summation order, gradients included.
// hidden: [B, T, D] (or [N, D]); head: [V, D] in hidden's dtype; targets, weights: B*T elements.
inline constexpr int64_t kLossChunkElements = int64_t{1} << 21;
at::Tensor lm_loss_from_hidden(const at::Tensor& hidden, const at::Tensor& head, const at::Tensor& targets,
                               const at::Tensor& weights, int64_t chunk_elements = kLossChunkElements);

// The sparsity regulariser's forms (recipe key loss.sparsity), on the per-layer keep ratios:
//   l2_target: mean_l (keep_l - target)^2
//   hinge:     mean_l max(0, keep_l - target)^2   (only keeping more than the target costs)
//   l1:        mean_l keep_l                       (push every layer down; target unused)
enum class SparsityForm { L2Target, Hinge, L1 };
inline constexpr Choices<SparsityForm, 3> kSparsityForms{{"l2_target", "hinge", "l1"}};

// What the gates are trained to preserve (recipe key loss.objective):
//   lm:             the gated model's next-token loss (+ distillation), back-propagated through
//                   the whole frozen model;
//   reconstruction: each layer's gated attention output against its full-cache output
//                   (ForwardOptions::reconstruct), on the base model's own residual stream: no
//                   gradient crosses layers, so a step costs about a forward.
enum class Objective { Lm, Reconstruction };
inline constexpr Choices<Objective, 2> kObjectives{{"lm", "reconstruction"}};

// keep: [L] per-layer mean keep (differentiable) -> the form's value (float32 scalar).
at::Tensor sparsity_loss(const at::Tensor& keep, SparsityForm form, double target_keep);

// KL(teacher || student) per target position, weighted mean: teacher_logits are the frozen
// base's (no gates, no grad). Both [B, T, V]; weights [B, T].
at::Tensor distill_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits, const at::Tensor& weights);

// lambda at `step`: ramps linearly from 0 to `lambda` over `warmup_steps` (0 = constant).
double sparsity_lambda(double lambda, int64_t warmup_steps, int64_t step);

// The keep target of the flags when a protected window of `window` recent entries is counted
// in a budget of target * n entries (n: the context length), as gate-rank counts it at
// inference: the flags outside the window may keep (target * n - window) of the other n - window
// entries. Clamped to [0, 1]; `target` when window is 0 or n <= window.
double window_counted_target(double target, int64_t n, int64_t window);

// The keep target at `step`: ramps linearly from 1 (keep everything) down to `target` over
// `ramp_steps` (0 = `target` from the start), as DMS ramps its compression ratio.
double target_keep_at(double target, int64_t ramp_steps, int64_t step);

}  // namespace agate
