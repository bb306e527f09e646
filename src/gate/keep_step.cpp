// The keep step as one autograd node: the CUDA kernel (src/gate/cuda/keep_step.cu) for CUDA
// tensors when built with it, else the ATen twin below; semantics in agate/gate/keep_step.h.
#include "agate/gate/keep_step.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#ifdef AGATE_USE_CUDA
#include "cuda/keep_step_cuda.h"
#endif

namespace agate {

namespace {

// The ATen twin of the forward. p: [B, T, Hkv] float32 (no gradient needed); pos: [T] int64 on
// p's device.
KeepStepResult twin_forward(const at::Tensor& p, const at::Tensor& pos, double threshold, int64_t sink_tokens,
                            KeepMode mode, int forced) {
  const int64_t T = p.size(1);
  KeepStepResult r;
  r.flags = forced >= 0 ? at::full(p.sizes(), static_cast<float>(forced), p.options())
                        : (p > threshold).to(at::kFloat);
  at::Tensor soft = p;
  if (sink_tokens > 0) {
    at::Tensor sink = (pos < sink_tokens).view({1, T, 1});
    at::Tensor one = at::ones({}, p.options());
    r.flags = at::where(sink, one, r.flags);
    if (mode == KeepMode::kSoft) soft = at::where(sink, one, p);
  }
  if (mode == KeepMode::kHard) r.keep = r.flags;
  else if (mode == KeepMode::kStraightThrough) r.keep = r.flags.clone();  // an output of its own
  else r.keep = soft.is_same(p) ? p.clone() : soft;
  r.flag_sum = r.flags.sum(at::IntArrayRef{0, 1});
  return r;
}

// The ATen twin of the backward. dkeep: [B, T, Hkv]; pos: [T] int64 on its device.
at::Tensor twin_backward(const at::Tensor& dkeep, const at::Tensor& pos, int64_t sink_tokens) {
  if (sink_tokens <= 0) return dkeep;
  return dkeep.masked_fill((pos < sink_tokens).view({1, pos.size(0), 1}), 0.0);
}

// p: [B, T, Hkv] float32, detached; pos: [T] int64 on p's device.
KeepStepResult forward_impl(const at::Tensor& p, const at::Tensor& pos, double threshold, int64_t sink_tokens,
                            KeepMode mode, int forced, bool twin_only) {
#ifdef AGATE_USE_CUDA
  if (!twin_only && p.is_cuda()) return gate_cuda::keep_step_forward(p, pos, threshold, sink_tokens, mode, forced);
#endif
  (void)twin_only;
  return twin_forward(p, pos, threshold, sink_tokens, mode, forced);
}

// dkeep: [B, T, Hkv] float32; pos: [T] int64 on its device -> dp: [B, T, Hkv].
at::Tensor backward_impl(const at::Tensor& dkeep, const at::Tensor& pos, int64_t sink_tokens, bool twin_only) {
#ifdef AGATE_USE_CUDA
  if (!twin_only && dkeep.is_cuda()) return gate_cuda::keep_step_backward(dkeep, pos, sink_tokens);
#endif
  (void)twin_only;
  return twin_backward(dkeep, pos, sink_tokens);
}

// The differentiable modes (STE, soft). Inputs: p [B, T, Hkv] float32, pos [T] int64 (same
// device). Outputs: keep [B, T, Hkv], flags [B, T, Hkv] and flag_sum [Hkv], the last two
// non-differentiable. Saved: pos only.
class KeepStepFn : public torch::autograd::Function<KeepStepFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& p,
                                                const at::Tensor& pos, double threshold, int64_t sink_tokens,
                                                KeepMode mode, int64_t forced, bool twin_only) {
    KeepStepResult r = forward_impl(p, pos, threshold, sink_tokens, mode, static_cast<int>(forced), twin_only);
    ctx->save_for_backward({pos});
    ctx->saved_data["sink_tokens"] = sink_tokens;
    ctx->saved_data["twin_only"] = twin_only;
    ctx->mark_non_differentiable({r.flags, r.flag_sum});
    return {r.keep, r.flags, r.flag_sum};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor pos = ctx->get_saved_variables()[0];
    at::Tensor dp = backward_impl(grads[0], pos, ctx->saved_data["sink_tokens"].toInt(),
                                  ctx->saved_data["twin_only"].toBool());
    return {dp, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// p: [B, T, Hkv] float32; positions: [T] integer.
KeepStepResult run(const at::Tensor& p, const at::Tensor& positions, double threshold, int64_t sink_tokens,
                   KeepMode mode, int forced, bool twin_only) {
  TORCH_CHECK(p.dim() == 3 && p.scalar_type() == at::kFloat, "keep_step: p must be [B, T, Hkv] float32, got ",
              p.sizes(), " ", p.scalar_type());
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == p.size(1) && !at::isFloatingType(positions.scalar_type()),
              "keep_step: positions must be [T] integers with T = ", p.size(1), ", got ", positions.sizes(), " ",
              positions.scalar_type());
  TORCH_CHECK(forced >= -1 && forced <= 1, "keep_step: forced must be -1, 0 or 1, got ", forced);
  // A no-op when the caller already holds int64 positions on p's device (the fast case).
  const at::Tensor pos = positions.to(p.device(), at::kLong).contiguous();
  if (mode != KeepMode::kHard && at::GradMode::is_enabled() && p.requires_grad()) {
    auto out = KeepStepFn::apply(p, pos, threshold, sink_tokens, mode, static_cast<int64_t>(forced), twin_only);
    return {out[0], out[1], out[2]};
  }
  c10::NoGradGuard no_grad;
  return forward_impl(p.detach(), pos, threshold, sink_tokens, mode, forced, twin_only);
}

}  // namespace

KeepStepResult keep_step(const at::Tensor& p, const at::Tensor& positions, double threshold, int64_t sink_tokens,
                         KeepMode mode, int forced) {
  return run(p, positions, threshold, sink_tokens, mode, forced, /*twin_only=*/false);
}

KeepStepResult keep_step_reference(const at::Tensor& p, const at::Tensor& positions, double threshold,
                                   int64_t sink_tokens, KeepMode mode, int forced) {
  return run(p, positions, threshold, sink_tokens, mode, forced, /*twin_only=*/true);
}

bool keep_step_has_cuda_kernel() {
#ifdef AGATE_USE_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace agate
