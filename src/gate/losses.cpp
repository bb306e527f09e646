#include "agate/gate/losses.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "agate/util/error.h"

namespace agate {

at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& weights, double* count) {
  const int64_t V = logits.size(-1);
  at::Tensor logp = at::log_softmax(logits.to(at::kFloat).reshape({-1, V}), -1);        // [B*T, V]
  at::Tensor nll = -logp.gather(1, targets.reshape({-1, 1})).squeeze(1);                 // [B*T]
  at::Tensor w = weights.reshape({-1}).to(at::kFloat);
  at::Tensor total = w.sum();
  if (count) *count = total.item<double>();
  return (nll * w).sum() / total.clamp_min(1.0);
}

at::Tensor sparsity_loss(const at::Tensor& keep, SparsityForm form, double target) {
  switch (form) {
    case SparsityForm::L2Target: return (keep - target).pow(2).mean();
    case SparsityForm::Hinge: return at::relu(keep - target).pow(2).mean();
    case SparsityForm::L1: return keep.mean();
  }
  throw_internal("sparsity form " + std::to_string(static_cast<int>(form)));
}

at::Tensor distill_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& weights) {
  const int64_t V = student.size(-1);
  at::Tensor ls = at::log_softmax(student.to(at::kFloat).reshape({-1, V}), -1);
  at::Tensor lt = at::log_softmax(teacher.to(at::kFloat).reshape({-1, V}), -1);
  at::Tensor kl = (lt.exp() * (lt - ls)).sum(-1);  // [B*T]
  at::Tensor w = weights.reshape({-1}).to(at::kFloat);
  return (kl * w).sum() / w.sum().clamp_min(1.0);
}

double window_counted_target(double target, int64_t n, int64_t window) {
  if (window <= 0 || n <= window) return target;
  const double t = (target * static_cast<double>(n) - static_cast<double>(window)) / static_cast<double>(n - window);
  return std::clamp(t, 0.0, 1.0);
}

double sparsity_lambda(double lambda, int64_t warmup_steps, int64_t step) {
  if (warmup_steps <= 0) return lambda;
  return lambda * std::min(1.0, static_cast<double>(step) / static_cast<double>(warmup_steps));
}

double target_keep_at(double target, int64_t ramp_steps, int64_t step) {
  if (ramp_steps <= 0) return target;
  return 1.0 - (1.0 - target) * std::min(1.0, static_cast<double>(step) / static_cast<double>(ramp_steps));
}

}  // namespace agate
