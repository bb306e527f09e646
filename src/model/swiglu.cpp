#include "agate/model/swiglu.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "swiglu_cpu.h"

namespace agate {

namespace {

class SwigluFn : public torch::autograd::Function<SwigluFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                                                const at::Tensor& u) {
    RECORD_FUNCTION("agate::swiglu_forward", std::vector<c10::IValue>());
    ctx->save_for_backward({g, u});
    return {kernels::swiglu_forward_cpu(g, u)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [dg, du] = kernels::swiglu_backward_cpu(grads[0], s[0], s[1]);
    return {dg, du};
  }
};

}  // namespace

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
  const auto st = gate.scalar_type();
  const bool fused = gate.is_cpu() && up.is_cpu() && (st == at::kFloat || st == at::kBFloat16) &&
                     up.scalar_type() == st && gate.sizes() == up.sizes();
  if (!fused) return at::silu(gate) * up;
  const at::Tensor g = gate.contiguous(), u = up.contiguous();
  const bool grad = c10::GradMode::is_enabled() && (g.requires_grad() || u.requires_grad());
  return grad ? SwigluFn::apply(g, u)[0] : kernels::swiglu_forward_cpu(g, u);
}

}  // namespace agate
