#include "agate/train/train_forward.h"

#include <ATen/ATen.h>

#include "agate/gate/gates.h"

namespace agate {

TrainForward::TrainForward(const LlamaModel& model, Gates* gates, ProjectionAdapter* adapter)
    : model_(model), gates_(gates), adapter_(adapter) {}

StepForward TrainForward::operator()(const at::Tensor& inputs, const at::Tensor& real, Pass pass, bool recompute) {
  ForwardOptions opts;
  opts.visibility = pass == Pass::base ? nullptr : gates_;
  opts.adapter = pass == Pass::base ? nullptr : adapter_;
  opts.train = pass == Pass::train;
  opts.recompute = recompute;
  opts.token_weight = real;
  ModelOutput o = model_.run(inputs, opts);
  StepForward out;
  out.logits = o.logits;
  if (opts.visibility) {
    out.keep = o.keep_means();
    out.kept = o.flag_means(real).mean();
  }
  return out;
}

}  // namespace agate
