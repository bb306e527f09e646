#include "recompute.h"

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "agate/util/error.h"

namespace agate {

namespace {

// What backward needs to run the layer again. Pointers refer to objects the caller keeps alive
// until backward has run (the model and the options' hooks).
struct LayerCall {
  const LlamaModel* model;
  int64_t layer;
  Positions positions;
  ForwardOptions options;
};

// inputs: h, and a scalar that requires grad (so backward is always called, even when h does
// not require grad, e.g. the first layer in gate training). outputs: the layer's output and its
// keep_mean (a zero scalar without a visibility).
class RecomputeFn : public torch::autograd::Function<RecomputeFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor h, at::Tensor anchor,
                                                LayerCall call, LayerStats* stats) {
    ctx->saved_data["model"] = reinterpret_cast<int64_t>(call.model);
    ctx->saved_data["layer"] = call.layer;
    ctx->saved_data["ids"] = call.positions.ids;
    ctx->saved_data["cos"] = call.positions.cos;
    ctx->saved_data["sin"] = call.positions.sin;
    ctx->saved_data["visibility"] = reinterpret_cast<int64_t>(call.options.visibility);
    ctx->saved_data["adapter"] = reinterpret_cast<int64_t>(call.options.adapter);
    ctx->saved_data["train"] = call.options.train;
    ctx->saved_data["dense_until"] = call.options.dense_until;
    // Every option the layer reads must reach the recomputation (the keep statistic's real
    // tokens, the split): backward runs the layer as forward did.
    ctx->saved_data["token_weight"] = call.options.token_weight.defined() ? call.options.token_weight : at::Tensor();
    ctx->save_for_backward({h});
    c10::NoGradGuard no_grad;
    at::Tensor out = LayerRecompute::layer(*call.model, call.layer, h, call.positions, call.options, stats);
    at::Tensor s = stats->keep_mean.defined() ? stats->keep_mean : at::zeros({}, at::kFloat);
    return {out, s};
  }

  static LayerCall restore(torch::autograd::AutogradContext* ctx) {
    LayerCall c;
    c.model = reinterpret_cast<const LlamaModel*>(ctx->saved_data["model"].toInt());
    c.layer = ctx->saved_data["layer"].toInt();
    c.positions.ids = ctx->saved_data["ids"].toTensor();
    c.positions.cos = ctx->saved_data["cos"].toTensor();
    c.positions.sin = ctx->saved_data["sin"].toTensor();
    c.options.visibility = reinterpret_cast<KeyVisibility*>(ctx->saved_data["visibility"].toInt());
    c.options.adapter = reinterpret_cast<ProjectionAdapter*>(ctx->saved_data["adapter"].toInt());
    c.options.train = ctx->saved_data["train"].toBool();
    c.options.dense_until = ctx->saved_data["dense_until"].toInt();
    const c10::IValue& w = ctx->saved_data["token_weight"];
    if (w.isTensor() && w.toTensor().defined()) c.options.token_weight = w.toTensor();
    return c;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const LayerCall call = restore(ctx);
    at::Tensor h = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor out;
    LayerStats stats;
    {
      at::AutoGradMode enable(true);
      out = LayerRecompute::layer(*call.model, call.layer, h, call.positions, call.options, &stats);
    }
    std::vector<at::Tensor> outs{out}, gouts{grads[0]};
    if (stats.keep_mean.defined() && stats.keep_mean.requires_grad() && grads[1].defined()) {
      outs.push_back(stats.keep_mean);
      gouts.push_back(grads[1]);
    }
    // Accumulates into the layer's trainable leaves, and into h.grad.
    torch::autograd::backward(outs, gouts);
    return {h.grad(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor LayerRecompute::run(const LlamaModel& model, int64_t layer, const at::Tensor& h, const Positions& positions,
                               const ForwardOptions& options, LayerStats* stats) {
  if (options.cache) throw_internal("activation recomputation is for training, not for cached inference");
  at::Tensor anchor = at::zeros({}, at::kFloat).requires_grad_(true);
  LayerStats local;
  auto outs = RecomputeFn::apply(h, anchor, LayerCall{&model, layer, positions, options}, &local);
  if (stats) {
    *stats = local;
    if (local.keep_mean.defined()) stats->keep_mean = outs[1];  // the differentiable one
  }
  return outs[0];
}

}  // namespace agate
