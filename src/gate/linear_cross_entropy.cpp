// The LM loss fused with the LM head (see losses.h, lm_loss_from_hidden): the logits are made,
// reduced and differentiated one chunk of rows at a time, so the [N, V] float32 log-probabilities
// of the unfused path (and their gradient, and the zero-filled gather gradient) never exist.
// On the CPU each chunk's rows go through one hand kernel (cross_entropy_cpu.h); elsewhere
// (CUDA) through ATen ops, which are already fused enough there.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <algorithm>

#include "agate/gate/losses.h"
#include "agate/util/error.h"
#include "cross_entropy_cpu.h"

namespace agate {

namespace {

// Forward computes the gradient too (the loss is a scalar at the end of the graph, so its
// upstream gradient only scales it); backward multiplies the saved gradients by it.
class LinearCrossEntropyFn : public torch::autograd::Function<LinearCrossEntropyFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                                                const at::Tensor& head, const at::Tensor& targets,
                                                const at::Tensor& weights, int64_t chunk_rows) {
    RECORD_FUNCTION("agate::linear_cross_entropy_forward", std::vector<c10::IValue>());  // named in --profile traces
    const int64_t N = hidden.size(0);
    const bool want_dh = hidden.requires_grad(), want_dw = head.requires_grad();
    const at::Tensor w = weights.to(at::kFloat);                        // [N]
    const at::Tensor denom = w.sum().clamp_min(1.0);                     // [] on the device: no host read
    const at::Tensor coef = (w / denom).unsqueeze(1);                    // [N, 1]: d loss / d nll_row
    at::Tensor loss = at::zeros({}, w.options());
    at::Tensor dh = want_dh ? at::empty_like(hidden) : at::Tensor();      // [N, D]
    at::Tensor dw = want_dw ? at::zeros(head.sizes(), head.options().dtype(at::kFloat)) : at::Tensor();  // [V, D]
    for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
      const int64_t r1 = std::min(N, r0 + chunk_rows);
      const at::Tensor h = hidden.slice(0, r0, r1);                      // [n, D]
      const at::Tensor t = targets.slice(0, r0, r1).unsqueeze(1);        // [n, 1]
      const at::Tensor c = coef.slice(0, r0, r1);                        // [n, 1]
      const at::Tensor logits = at::mm(h, head.t());                      // [n, V] in the model's dtype
      at::Tensor g;  // d loss / d logits = (softmax - onehot) * coef, in the logits' dtype
      if (logits.is_cpu() && (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16)) {
        if (want_dh || want_dw) g = logits;  // in place: the logits are not needed after their row's pass
        loss += (kernels::cross_entropy_rows(logits, t, c, g) * c.squeeze(1)).sum();
      } else {
        // Log-probabilities in float32, as the unfused path computes them from the same logits.
        at::Tensor lp = at::log_softmax(logits, 1, at::kFloat);  // [n, V]
        loss += (lp.gather(1, t) * c).sum().neg();
        if (want_dh || want_dw) {
          g = lp.exp_().mul_(c);
          g.scatter_add_(1, t, c.neg());
          g = g.to(hidden.scalar_type());
        }
      }
      if (!g.defined()) continue;
      if (want_dh) {
        at::Tensor rows = dh.slice(0, r0, r1);
        at::mm_out(rows, g, head);
      }
      if (want_dw) dw.addmm_(g.t().to(at::kFloat), h.to(at::kFloat));
    }
    ctx->save_for_backward({dh, dw.defined() ? dw.to(head.scalar_type()) : dw});
    return {loss};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor& up = grads[0];  // [] float32
    at::Tensor dh = s[0].defined() ? s[0] * up.to(s[0].scalar_type()) : at::Tensor();
    at::Tensor dw = s[1].defined() ? s[1] * up.to(s[1].scalar_type()) : at::Tensor();
    return {dh, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor lm_loss_from_hidden(const at::Tensor& hidden, const at::Tensor& head, const at::Tensor& targets,
                               const at::Tensor& weights, int64_t chunk_elements) {
  const int64_t D = hidden.size(-1), V = head.size(0);
  if (head.dim() != 2 || head.size(1) != D) throw_internal("lm_loss_from_hidden: the head must be [V, D]");
  const at::Tensor h = hidden.reshape({-1, D});
  const int64_t N = h.size(0);
  if (targets.numel() != N || weights.numel() != N) throw_internal("lm_loss_from_hidden: one target and weight per row");
  const int64_t rows = std::max<int64_t>(1, chunk_elements / std::max<int64_t>(V, 1));
  return LinearCrossEntropyFn::apply(h, head, targets.reshape({-1}), weights.reshape({-1}), rows)[0];
}

}  // namespace agate
