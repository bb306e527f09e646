#include "agate/train/train_step.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <vector>

#include "agate/dist/dist.h"
#include "agate/gate/losses.h"
#include "agate/train/adamw.h"
#include "agate/train/run_config.h"
#include "agate/util/error.h"

namespace agate {

namespace {

// Every trainable gradient (missing ones as zeros) in one flat buffer, summed over ranks,
// written back. One collective per step.
void all_reduce_gradients(const NamedTensors& trainable, ProcessGroup& pg) {
  if (pg.world() == 1) return;
  std::vector<at::Tensor> flat;
  for (const auto& [name, p] : trainable) {
    flat.push_back(p.grad().defined() ? p.grad().reshape({-1}) : at::zeros({p.numel()}, p.options()));
  }
  at::Tensor buffer = at::cat(flat);
  pg.all_reduce_sum(buffer);
  int64_t at = 0;
  for (const auto& [name, p] : trainable) {
    at::Tensor g = buffer.slice(0, at, at + p.numel()).view_as(p);
    if (p.grad().defined()) p.mutable_grad().copy_(g);
    else p.mutable_grad() = g.clone();
    at += p.numel();
  }
}

// Global L2 norm of the gradients (float64 device scalar); scales them to `max_norm` when
// above it (max_norm > 0), without leaving the device.
at::Tensor clip_gradients(const NamedTensors& trainable, double max_norm, c10::Device device) {
  std::vector<at::Tensor> grads;
  for (const auto& [name, p] : trainable)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return at::zeros({}, at::TensorOptions(at::kDouble).device(device));
  std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  at::Tensor total = at::stack(norms).to(at::kFloat).norm().to(at::kDouble);  // []
  if (max_norm > 0) {
    at::Tensor scale = at::where(total > max_norm, max_norm / (total + 1e-6), at::ones_like(total));
    at::_foreach_mul_(grads, scale);
  }
  return total;
}

}  // namespace

TrainStep::TrainStep(Forward forward, NamedTensors trainable, AdamW& optimizer, ProcessGroup& pg,
                     TrainStepOptions options, c10::Device device)
    : forward_(std::move(forward)),
      trainable_(std::move(trainable)),
      optimizer_(optimizer),
      pg_(pg),
      o_(std::move(options)),
      device_(device) {}

TrainStepOptions train_step_options(const RunConfig& c, bool gates) {
  TrainStepOptions o;
  o.micro_batch = c.train.micro_batch, o.global_batch = c.train.global_batch, o.gates = gates;
  o.recompute = c.train.recompute;
  o.sparsity = c.loss.sparsity, o.objective = c.loss.objective;
  o.distill = c.loss.distill, o.grad_clip = c.optim.grad_clip;
  return o;
}

StepStats TrainStep::run(const at::Tensor& tokens_host, const at::Tensor& mask_host, double lr, double lambda,
                         double target_keep, const at::Tensor& real_host, int64_t context) {
  const auto f64 = at::TensorOptions(at::kDouble).device(device_);
  const int64_t local = tokens_host.size(0), T = tokens_host.size(1) - 1;
  // Target counts from the host copy of the mask: no device read. The global count is summed
  // over ranks on the device.
  at::Tensor w_host = mask_host.slice(1, 1);  // [local, T]: the weight of the target after input position t
  if (context > 0) {  // only the continuation's predictions count
    w_host = w_host.clone();
    w_host.slice(1, 0, std::min(context, T)).zero_();
  }
  at::Tensor total = at::full({}, w_host.sum().item<double>(), f64);
  pg_.all_reduce_sum(total);
  total = total.clamp_min(1.0);
  const at::Tensor tokens = tokens_host.to(device_, /*non_blocking=*/true);
  const at::Tensor weights = w_host.to(device_, /*non_blocking=*/true);
  const at::Tensor real = real_host.defined() ? real_host.to(device_, /*non_blocking=*/true) : at::Tensor();

  optimizer_.zero_grad();
  at::Tensor loss_sum = at::zeros({}, f64), lm_sum = at::zeros({}, f64), sp_sum = at::zeros({}, f64);
  at::Tensor keep_sum = at::zeros({}, f64), finite = at::ones({}, f64.dtype(at::kBool));
  for (int64_t m0 = 0; m0 < local; m0 += o_.micro_batch) {
    const int64_t m1 = std::min(local, m0 + o_.micro_batch);
    at::Tensor tok = tokens.slice(0, m0, m1);
    at::Tensor inputs = tok.slice(1, 0, T), targets = tok.slice(1, 1);
    at::Tensor w = weights.slice(0, m0, m1);
    const double count = w_host.slice(0, m0, m1).sum().item<double>();  // host
    const at::Tensor real_in = real.defined() ? real.slice(0, m0, m1).slice(1, 0, T) : at::Tensor();
    const bool recon = o_.objective == Objective::Reconstruction;
    // Logits are only materialised when distillation needs them; else the LM loss is fused with
    // the head (reconstruction needs neither).
    const bool need_logits = o_.distill > 0 && o_.gates;
    StepForward fw = forward_({inputs, real_in, Pass::train, o_.recompute, context, recon, need_logits});
    const at::Tensor &logits = fw.logits, &keep = fw.keep;
    if (recon && !fw.recon.defined()) throw_internal("the reconstruction objective's forward recorded no layer error");
    // The main term: the LM loss over the targets, or the mean per-layer reconstruction error.
    at::Tensor lm = recon              ? fw.recon.mean()
                    : logits.defined() ? lm_loss(logits, targets, w)
                                       : lm_loss_from_hidden(fw.hidden, fw.head, targets, w);
    // Per-rank terms are scaled so that the SUM of the ranks' gradients is the global one.
    const double share = static_cast<double>(m1 - m0) / static_cast<double>(o_.global_batch);
    // [] float64: this micro-batch's share of the global targets (of the sequences, for reconstruction)
    const at::Tensor lm_share = recon ? at::full({}, share, f64) : count / total;
    at::Tensor loss = lm * lm_share.to(at::kFloat);
    if (o_.gates) {
      at::Tensor sp = sparsity_loss(keep, o_.sparsity, target_keep);
      loss = loss + lambda * share * sp;
      sp_sum += sp.detach().to(at::kDouble) * share;
    }
    if (o_.distill > 0 && o_.gates) {
      at::Tensor teacher;
      {
        c10::NoGradGuard no_grad;
        teacher = forward_({inputs, real_in, Pass::base, false, 0}).logits;  // the frozen base: no gates, no LoRA
      }
      loss = loss + o_.distill * share * distill_loss(logits, teacher, w);
    }
    keep_sum += fw.kept.defined() ? fw.kept.to(at::kDouble) * share : at::full({}, share, f64);
    finite = finite.logical_and(at::isfinite(loss.detach()));
    loss.backward();
    loss_sum += loss.detach().to(at::kDouble);
    lm_sum += lm.detach().to(at::kDouble) * lm_share;
  }
  // Agree on skipping: one rank's non-finite loss skips the step everywhere.
  at::Tensor bad = finite.logical_not().to(at::kDouble);
  pg_.all_reduce_max(bad);
  all_reduce_gradients(trainable_, pg_);
  at::Tensor parts = at::stack({loss_sum, lm_sum, sp_sum, keep_sum});
  pg_.all_reduce_sum(parts);
  StepStats s;
  s.grad_norm = clip_gradients(trainable_, o_.grad_clip, device_);
  s.ok = bad.eq(0).logical_and(at::isfinite(s.grad_norm));
  optimizer_.step(lr, s.ok);
  optimizer_.zero_grad();
  s.loss = parts[0], s.lm = parts[1], s.sparsity = parts[2], s.keep = parts[3];
  return s;
}

StepWindow::StepWindow(c10::Device device) : device_(device), sums_(at::zeros({8}, at::TensorOptions(at::kDouble).device(device))) {}

void StepWindow::add(const StepStats& s) {
  at::Tensor ok = s.ok.to(at::kDouble);
  at::Tensor zero = at::zeros({}, ok.options());
  at::Tensor row = at::stack({ok, s.loss * ok, s.lm * ok, s.sparsity * ok, s.keep * ok, zero, zero, at::ones_like(ok)});
  at::Tensor next = sums_ + at::where(at::isfinite(row), row, zero);  // a skipped step's NaN never enters
  // grad_norm: the last applied step's; bad_in_row: +1 on a skipped step, 0 on an applied one.
  next.select(0, 5).copy_(at::where(s.ok, s.grad_norm, sums_[5]));
  next.select(0, 6).copy_(at::where(s.ok, zero, sums_[6] + 1));
  sums_ = next;
}

StepWindow::Sums StepWindow::read(bool reset) {
  const at::Tensor h = sums_.cpu();
  const double* v = h.data_ptr<double>();
  Sums r;
  r.good = static_cast<int64_t>(v[0]);
  r.loss = v[1], r.lm = v[2], r.sparsity = v[3], r.keep = v[4], r.grad_norm = v[5];
  r.bad_in_row = static_cast<int64_t>(v[6]);
  r.steps = static_cast<int64_t>(v[7]);
  if (reset) {
    at::Tensor next = at::zeros_like(sums_);
    next.slice(0, 5, 7).copy_(sums_.slice(0, 5, 7));
    sums_ = next;
  }
  return r;
}

void StepWindow::restore(const Sums& w) {
  const std::vector<double> v = {static_cast<double>(w.good), w.loss, w.lm, w.sparsity, w.keep, w.grad_norm,
                                 static_cast<double>(w.bad_in_row), static_cast<double>(w.steps)};
  sums_ = at::tensor(v, at::kDouble).to(device_);
}

}  // namespace agate
