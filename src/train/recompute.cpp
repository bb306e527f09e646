#include "agate/train/recompute.h"

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "agate/gate/gates.h"

namespace agate {

namespace {

struct LayerCall {
  const LlamaModel* model;
  int64_t layer;
  const Positions* positions;
  ForwardOptions options;
  Gates* gates;
  bool training = false;  // the gates' training state at forward time, restored for the recompute

  // Runs the layer; returns (out, keep surrogate or a zero scalar).
  std::pair<at::Tensor, at::Tensor> run(const at::Tensor& h) const {
    at::Tensor out = model->layer_forward(layer, h, *positions, options);
    at::Tensor s = at::zeros({}, at::kFloat);
    if (gates && gates->surrogate(layer).defined()) s = gates->surrogate(layer);
    return {out, s};
  }
};

// inputs: h, and a scalar that requires grad (so backward is always called, even when h does
// not require grad, e.g. the first layer in gate training).
class RecomputeFn : public torch::autograd::Function<RecomputeFn> {
 public:
  // The call's pointers refer to objects the caller keeps alive until backward has run (the
  // model, the step's positions, the gates and adapters); they are stored by value.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor h, at::Tensor anchor,
                                                LayerCall call) {
    ctx->saved_data["model"] = reinterpret_cast<int64_t>(call.model);
    ctx->saved_data["layer"] = call.layer;
    ctx->saved_data["positions"] = reinterpret_cast<int64_t>(call.positions);
    ctx->saved_data["visibility"] = reinterpret_cast<int64_t>(call.options.visibility);
    ctx->saved_data["adapter"] = reinterpret_cast<int64_t>(call.options.adapter);
    ctx->saved_data["gates"] = reinterpret_cast<int64_t>(call.gates);
    ctx->saved_data["training"] = call.gates != nullptr && call.gates->training();
    ctx->save_for_backward({h});
    c10::NoGradGuard no_grad;
    auto [out, s] = call.run(h);
    return {out, s};
  }

  static LayerCall restore(torch::autograd::AutogradContext* ctx) {
    LayerCall c;
    c.model = reinterpret_cast<const LlamaModel*>(ctx->saved_data["model"].toInt());
    c.layer = ctx->saved_data["layer"].toInt();
    c.positions = reinterpret_cast<const Positions*>(ctx->saved_data["positions"].toInt());
    c.options.visibility = reinterpret_cast<KeyVisibility*>(ctx->saved_data["visibility"].toInt());
    c.options.adapter = reinterpret_cast<ProjectionAdapter*>(ctx->saved_data["adapter"].toInt());
    c.gates = reinterpret_cast<Gates*>(ctx->saved_data["gates"].toInt());
    c.training = ctx->saved_data["training"].toBool();
    return c;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const LayerCall call = restore(ctx);
    at::Tensor h = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor out, s;
    {
      // The same keep as the forward saw, whatever the gates were set to since (another pass,
      // e.g. the distillation teacher, may have run in between).
      at::AutoGradMode enable(true);
      const bool was = call.gates != nullptr && call.gates->training();
      if (call.gates) call.gates->set_training(call.training);
      std::tie(out, s) = call.run(h);
      if (call.gates) call.gates->set_training(was);
    }
    std::vector<at::Tensor> outs{out}, gouts{grads[0]};
    if (s.requires_grad() && grads[1].defined()) {
      outs.push_back(s);
      gouts.push_back(grads[1]);
    }
    // Accumulates into the layer's trainable leaves, and into h.grad.
    torch::autograd::backward(outs, gouts);
    return {h.grad(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> recomputed_layer(const LlamaModel& model, int64_t layer, const at::Tensor& h,
                                                   const Positions& positions, const ForwardOptions& options,
                                                   Gates* gates) {
  if (options.cache) throw std::logic_error("activation recomputation is for training, not for cached inference");
  at::Tensor anchor = at::zeros({}, at::kFloat).requires_grad_(true);
  auto outs = RecomputeFn::apply(h, anchor, LayerCall{&model, layer, &positions, options, gates});
  return {outs[0], gates ? outs[1] : at::Tensor()};
}

}  // namespace agate
