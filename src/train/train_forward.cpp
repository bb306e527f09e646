#include "agate/train/train_forward.h"

#include <ATen/ATen.h>

#include "agate/gate/gates.h"

namespace agate {

TrainForward::TrainForward(const LlamaModel& model, Gates* gates, ProjectionAdapter* adapter)
    : model_(model), gates_(gates), adapter_(adapter) {}

StepForward TrainForward::operator()(const ForwardCall& call) {
  ForwardOptions opts;
  opts.visibility = call.pass == Pass::base ? nullptr : gates_;
  opts.adapter = call.pass == Pass::base ? nullptr : adapter_;
  opts.train = call.pass == Pass::train;
  opts.recompute = call.recompute;
  opts.token_weight = call.real;
  opts.dense_until = opts.visibility ? call.context : 0;
  opts.reconstruct = call.reconstruct && opts.visibility;
  opts.head = call.logits;
  ModelOutput o = model_.run(call.inputs, opts);
  StepForward out;
  out.logits = o.logits;
  if (!call.logits) out.hidden = o.hidden, out.head = model_.lm_head();
  if (opts.visibility) {
    out.keep = o.keep_means();
    out.kept = o.flag_means(call.real).mean();
    if (opts.reconstruct) out.recon = o.recon_errors();
  }
  return out;
}

}  // namespace agate
