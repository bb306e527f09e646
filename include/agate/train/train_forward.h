// The forward a training step runs through: the frozen (or, in pretraining, trainable) model
// with the gates as its key visibility and the LoRA adapters on its projections, each layer
// optionally recomputed in backward. Returns what TrainStep needs (StepForward).
#pragma once

#include <ATen/core/Tensor.h>

#include "agate/model/llama.h"
#include "agate/train/train_step.h"

namespace agate {

class Gates;

class TrainForward {
 public:
  // Not owned; all must outlive every backward of a forward made here. `gates`, `adapter`
  // may be null.
  TrainForward(const LlamaModel& model, Gates* gates, ProjectionAdapter* adapter);

  // call.inputs: [b, T] int64 on the model's device; call.real: [b, T] float 0/1 there (the
  // samples' own tokens; undefined = all): the keep statistics count only those. call.pass:
  // which model (see Pass; train asks the gates for the keep training differentiates);
  // call.recompute: per-layer activation recomputation; call.context: ForwardOptions::dense_until.
  StepForward operator()(const ForwardCall& call);

 private:
  const LlamaModel& model_;
  Gates* gates_;
  ProjectionAdapter* adapter_;
};

}  // namespace agate
