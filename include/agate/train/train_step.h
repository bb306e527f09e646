// One optimisation step, entirely on the device: micro-batches -> loss parts -> agreement
// across ranks on a non-finite step -> gradient all-reduce -> clip -> optimizer step (skipped
// by a device-side flag when the step is bad). Nothing is read back to the host: the
// statistics stay device tensors until a log step reads them (StepWindow). `agate bench train`
// times this very step.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <string>

#include "agate/gate/losses.h"
#include "agate/io/named_tensors.h"

namespace agate {

class AdamW;
class ProcessGroup;

struct RunConfig;

struct TrainStepOptions {
  int64_t micro_batch = 1;            // sequences per forward/backward
  int64_t global_batch = 1;           // sequences per step over all ranks
  bool gates = false;                 // the model has gates: add the sparsity term
  bool recompute = false;             // per-layer recomputation (passed to the forward)
  SparsityForm sparsity = SparsityForm::L2Target;  // see sparsity_loss
  Objective objective = Objective::Lm;              // see Objective (agate/gate/losses.h)
  double distill = 0.0;               // weight of KL(full-cache model || gated model)
  double grad_clip = 0.0;             // global L2 norm bound (0 = none)
};

// A run's step options (train.*, loss.*, optim.grad_clip); `gates`: the run trains gates.
TrainStepOptions train_step_options(const RunConfig& config, bool gates);

// Device scalars (0-dim), summed over ranks. float64 except `ok`.
struct StepStats {
  at::Tensor loss, lm, sparsity, keep;  // keep: mean hard-flag keep ratio (1 without gates); lm: the
                                        // objective's main term (the LM loss, or the mean per-layer
                                        // reconstruction error)
  at::Tensor grad_norm;                 // global gradient norm before clipping
  at::Tensor ok;                        // bool: the loss and gradient were finite on every rank (update applied)
};

// Which model a forward runs.
enum class Pass {
  train,     // the trained model: gates in training (their estimator) + adapters
  validate,  // the trained model as deployed: gates with hard flags + adapters
  base,      // the frozen base alone: no gates, no adapters (distillation teacher, base loss)
};

// What the step needs from one forward of a micro-batch.
struct StepForward {
  at::Tensor logits;  // [b, T, V]; or, when the call allowed it (ForwardCall::logits false), undefined and:
  at::Tensor hidden;  // [b, T, D] the final normed hidden state and
  at::Tensor head;    // [V, D] the LM head, for the loss fused with the head (lm_loss_from_hidden)
  at::Tensor keep;    // [L] per-layer keep surrogate (differentiable); undefined without gates
  at::Tensor kept;    // [] mean hard keep flag of this forward's real tokens; undefined without gates
  at::Tensor recon;   // [L] per-layer reconstruction errors (differentiable); only when asked for
};

// One forward of a micro-batch: what it reads and how it runs.
struct ForwardCall {
  at::Tensor inputs;      // [b, T] int64 on the device
  at::Tensor real;        // [b, T] float 0/1 on the device: the samples' own tokens (undefined = all)
  Pass pass = Pass::train;
  bool recompute = false; // per-layer activation recomputation
  int64_t context = 0;    // a context/continuation split: queries before it attend fully
                          // (ForwardOptions::dense_until); 0 = none
  bool reconstruct = false;  // per-layer reconstruction (ForwardOptions::reconstruct)
  bool logits = true;        // false: hidden + head may be returned instead of logits
};

class TrainStep {
 public:
  using Forward = std::function<StepForward(const ForwardCall&)>;

  TrainStep(Forward forward, NamedTensors trainable, AdamW& optimizer, ProcessGroup& pg, TrainStepOptions options,
            c10::Device device);

  // tokens: [local, T + 1] int64 and mask: [local, T + 1] float on the host (the loss weights
  // of the targets; their sums are taken on the host, then both move to the device).
  // lr, lambda, target_keep: this step's learning rate, sparsity weight and keep target.
  // real: [local, T + 1] float on the host, 1 for the samples' own tokens, 0 for padding (the
  // keep surrogate and the kept ratio count real tokens only); undefined = every token.
  // context > 0: a context/continuation split (train what compression after a full prefill
  // evaluates): the first `context` positions attend fully, the continuation sees the flagged
  // keys, and only the continuation's predictions (targets of positions >= context) count in
  // the LM and distillation losses.
  StepStats run(const at::Tensor& tokens, const at::Tensor& mask, double lr, double lambda, double target_keep,
                const at::Tensor& real = {}, int64_t context = 0);

 private:
  Forward forward_;
  NamedTensors trainable_;
  AdamW& optimizer_;
  ProcessGroup& pg_;
  TrainStepOptions o_;
  c10::Device device_;
};

// Device-side sums of step statistics between two log steps, read with one copy.
class StepWindow {
 public:
  explicit StepWindow(c10::Device device);
  void add(const StepStats& s);
  // Raw sums over the applied steps (exact, so a checkpoint can restore them bit for bit).
  struct Sums {
    int64_t steps = 0, good = 0;                     // steps added, and those applied
    double loss = 0, lm = 0, sparsity = 0, keep = 0;  // sums over the applied steps
    double grad_norm = 0;                             // of the last applied step
    int64_t bad_in_row = 0;                           // consecutive skipped steps up to the last one added
  };
  // Reads the window (one device-to-host copy); `reset` starts a new window (the last grad
  // norm and the run of skipped steps carry over).
  Sums read(bool reset);
  // Restores a window saved in a checkpoint.
  void restore(const Sums& sums);

 private:
  c10::Device device_;
  at::Tensor sums_;  // [8] float64: good, loss, lm, sparsity, keep, grad_norm, bad_in_row, steps
};

}  // namespace agate
