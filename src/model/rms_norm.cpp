#include "agate/model/rms_norm.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "rms_norm_cpu.h"

namespace agate {

namespace {

class RmsNormFn : public torch::autograd::Function<RmsNormFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& weight, double eps) {
    RECORD_FUNCTION("agate::rms_norm_forward", std::vector<c10::IValue>());
    auto [out, r] = kernels::rms_norm_forward_cpu(x, weight, eps);
    ctx->save_for_backward({x, weight, r});
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    return {kernels::rms_norm_backward_cpu(grads[0], s[0], s[1], s[2]), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto st = x.scalar_type();
  const bool fused = x.is_cpu() && (st == at::kFloat || st == at::kBFloat16) && weight.scalar_type() == st &&
                     !weight.requires_grad() && x.numel() > 0;
  if (!fused) return rms_norm_reference(x, weight, eps);
  const int64_t D = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, D}).contiguous();
  at::Tensor out = (x.requires_grad() && c10::GradMode::is_enabled()) ? RmsNormFn::apply(x2, weight, eps)[0]
                                                                       : kernels::rms_norm_forward_cpu(x2, weight, eps).first;
  return out.view(x.sizes());
}

}  // namespace agate
