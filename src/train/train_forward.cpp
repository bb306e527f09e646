#include "agate/train/train_forward.h"

#include <ATen/ATen.h>

#include <vector>

#include "agate/gate/gates.h"
#include "agate/train/recompute.h"

namespace agate {

TrainForward::TrainForward(const LlamaModel& model, Gates* gates, ProjectionAdapter* adapter)
    : model_(model), gates_(gates), adapter_(adapter) {}

StepForward TrainForward::operator()(const at::Tensor& inputs, Pass pass, bool recompute) {
  Gates* gates = pass == Pass::base ? nullptr : gates_;
  ForwardOptions opts;
  opts.visibility = gates;
  opts.adapter = pass == Pass::base ? nullptr : adapter_;
  if (gates) {
    gates->reset_stats();
    gates->set_training(pass == Pass::train);
  }
  if (!positions_.ids.defined() || positions_.ids.size(0) != inputs.size(1)) positions_ = model_.positions(0, inputs.size(1));
  at::Tensor h = model_.embed(inputs);
  std::vector<at::Tensor> surrogates;
  for (int64_t i = 0; i < model_.config().num_hidden_layers; ++i) {
    if (recompute) {
      auto [out, s] = recomputed_layer(model_, i, h, positions_, opts, gates);
      h = out;
      if (s.defined()) surrogates.push_back(s);
    } else {
      h = model_.layer_forward(i, h, positions_, opts);
    }
  }
  StepForward out;
  out.logits = model_.head(h);
  if (gates) {
    out.keep = recompute ? at::stack(surrogates) : gates->stats().surrogate;
    out.kept = gates->stats().flags.mean();
  }
  return out;
}

}  // namespace agate
