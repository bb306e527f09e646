#include "agate/model/attention.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cmath>
#include <limits>

#include "agate/util/error.h"
#include "attention_kernels.h"
#include "flash_attention.h"

namespace agate {

namespace {

std::atomic<AttentionKernel> g_kernel{AttentionKernel::Flash};

// The structural masks: allowed [Tq, Tk] (causal + window) and always [Tq, Tk] (self + recent
// + the dense queries below dense_until).
std::pair<at::Tensor, at::Tensor> structure(const at::Tensor& q_pos, const at::Tensor& k_pos, int64_t sliding_window,
                                            int64_t recent_window, int64_t dense_until) {
  const int64_t Tq = q_pos.numel(), Tk = k_pos.numel();
  at::Tensor qp = q_pos.view({Tq, 1}), kp = k_pos.view({1, Tk});
  at::Tensor allowed = kp <= qp;
  if (sliding_window > 0) allowed = allowed.logical_and(qp - kp < sliding_window);
  at::Tensor always = (qp == kp);
  if (recent_window > 0) always = always.logical_or(qp - kp < recent_window);
  if (dense_until > 0) always = always.logical_or(qp < dense_until);
  return {allowed, always};
}

// The gated path of masked_attention as one autograd node. Forward: S = Q K^T / sqrt(hd) by
// a batched matmul, then one row kernel builds M on the fly and writes e (over S), the row sums
// z and A = e M / z in V's dtype; O = A V. Saved: Q, K, V, e and z (the composed path keeps
// scores, probabilities, M, e and e M alive). Backward, in closed form:
//   dA = dO V^T;  one row kernel: A again, g = (dA - rowsum(dA * A)) / z, dS = g e M / sqrt(hd)
//   (zero where hidden), d keep_j = sum of g e over the rows that read key j through its flag;
//   dV = A^T dO;  dQ = dS K;  dK = dS^T Q.
class MaskedAttentionFn : public torch::autograd::Function<MaskedAttentionFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep,
                                                const at::Tensor& allowed, const at::Tensor& always) {
    const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), hd = q.size(3);
    const int64_t Hkv = k.size(1), Tk = k.size(2), G = H / Hkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    at::Tensor qg = q.reshape({B, Hkv, G * Tq, hd});
    at::Tensor e = at::matmul(qg, k.transpose(-1, -2)).mul_(scale).to(at::kFloat).contiguous().view({-1, Tk});
    at::Tensor keepf = keep.detach().to(at::kFloat).contiguous();
    at::Tensor z = at::empty({e.size(0)}, e.options());
    at::Tensor a = at::empty(e.sizes(), e.options().dtype(v.scalar_type()));
    kernels::gated_softmax_forward(e, keepf, allowed, always, G, z, a);
    at::Tensor out = at::matmul(a.view({B, Hkv, G * Tq, Tk}), v).view({B, H, Tq, hd});
    ctx->save_for_backward({q, k, v, e, z, keepf, allowed, always});
    ctx->saved_data["keep_dtype"] = static_cast<int64_t>(keep.scalar_type());
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &e = saved[3], &z = saved[4], &keepf = saved[5];
    const at::Tensor &allowed = saved[6], &always = saved[7];
    const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), hd = q.size(3);
    const int64_t Hkv = k.size(1), Tk = k.size(2), G = H / Hkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    at::Tensor dout = grads[0].reshape({B, Hkv, G * Tq, hd});
    at::Tensor da = at::matmul(dout, v.transpose(-1, -2)).to(at::kFloat).contiguous().view({-1, Tk});
    at::Tensor a = at::empty(da.sizes(), da.options().dtype(v.scalar_type()));
    at::Tensor dkeep = at::empty(keepf.sizes(), keepf.options());
    kernels::gated_softmax_backward(da, e, z, keepf, allowed, always, G, scale, a, dkeep);  // da -> dS
    at::Tensor dv = at::matmul(a.view({B, Hkv, G * Tq, Tk}).transpose(-1, -2), dout);
    at::Tensor ds = da.to(q.scalar_type()).view({B, Hkv, G * Tq, Tk});
    at::Tensor dq = at::matmul(ds, k).view({B, H, Tq, hd});
    at::Tensor dk = at::matmul(ds.transpose(-1, -2), q.reshape({B, Hkv, G * Tq, hd}));
    return {dq, dk, dv, dkeep.to(static_cast<c10::ScalarType>(ctx->saved_data["keep_dtype"].toInt())), at::Tensor(),
            at::Tensor()};
  }
};

// The blocked kernels (flash_attention.h) on q's device.
kernels::FlashForward flash_forward(const kernels::FlashArgs& a) {
#ifdef AGATE_USE_CUDA
  if (a.q.is_cuda()) return kernels::flash_forward_cuda(a);
#endif
  return kernels::flash_forward_cpu(a);
}

kernels::FlashGrads flash_backward(const kernels::FlashArgs& a, const kernels::FlashForward& f, const at::Tensor& dout) {
#ifdef AGATE_USE_CUDA
  if (a.q.is_cuda()) return kernels::flash_backward_cuda(a, f, dout);
#endif
  return kernels::flash_backward_cpu(a, f, dout);
}

bool flash_device(const at::Tensor& q) {
#ifdef AGATE_USE_CUDA
  if (q.is_cuda()) return true;
#endif
  return q.is_cpu();
}

// key_keep [B, Tk, Hkv] -> the kernels' keep [B, Hkv, Tk] float32 (undefined stays undefined).
at::Tensor kernel_keep(const at::Tensor& key_keep) {
  return key_keep.defined() ? key_keep.detach().to(at::kFloat).permute({0, 2, 1}).contiguous() : at::Tensor();
}

// The blocked path as one autograd node: saves q, k, v, keep, the output and the per-row m and
// z (no Tq x Tk tensor); the backward recomputes the scores tile by tile.
class FlashAttentionFn : public torch::autograd::Function<FlashAttentionFn> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_keep,
                                                const at::Tensor& q_pos, const at::Tensor& k_pos,
                                                int64_t sliding_window, int64_t recent_window, int64_t dense_until) {
    RECORD_FUNCTION("agate::flash_attention_forward", std::vector<c10::IValue>());  // named in --profile traces
    // No keep vector arrives as an empty 1-D placeholder (autograd functions take defined inputs).
    const bool has_keep = key_keep.dim() != 1;
    kernels::FlashArgs a{q, k, v, q_pos, k_pos, has_keep ? kernel_keep(key_keep) : at::Tensor(), sliding_window,
                         recent_window, dense_until};
    kernels::FlashForward f = flash_forward(a);
    ctx->save_for_backward({q, k, v, a.keep, q_pos, k_pos, f.out, f.m, f.z});
    ctx->saved_data["windows"] = std::vector<int64_t>{sliding_window, recent_window, dense_until};
    ctx->saved_data["keep_dtype"] = static_cast<int64_t>(key_keep.scalar_type());
    return {f.out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto w = ctx->saved_data["windows"].toIntVector();
    kernels::FlashArgs a{s[0], s[1], s[2], s[4], s[5], s[3], w[0], w[1], w[2]};
    kernels::FlashGrads g = flash_backward(a, {s[6], s[7], s[8]}, grads[0]);
    at::Tensor dkeep;
    if (g.dkeep.defined()) {
      dkeep = g.dkeep.permute({0, 2, 1}).to(static_cast<c10::ScalarType>(ctx->saved_data["keep_dtype"].toInt()));
    }
    return {g.dq, g.dk, g.dv, dkeep, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void set_attention_kernel(AttentionKernel kernel) { g_kernel = kernel; }
AttentionKernel attention_kernel() { return g_kernel; }

const char* attention_kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::Flash: return "flash";
    case AttentionKernel::Rows: return "rows";
    case AttentionKernel::Reference: return "reference";
  }
  return "?";
}

AttentionKernel parse_attention_kernel(const std::string& name) {
  for (auto k : {AttentionKernel::Flash, AttentionKernel::Rows, AttentionKernel::Reference}) {
    if (name == attention_kernel_name(k)) return k;
  }
  throw_usage("unknown attention kernel '" + name + "'", "choose flash, rows or reference");
}

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& q_pos, const at::Tensor& k_pos,
                            const at::Tensor& key_keep, int64_t sliding_window, int64_t recent_window,
                            int64_t dense_until) {
  const bool grad = at::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                     (key_keep.defined() && key_keep.requires_grad()));
  // The fused and blocked paths compute the softmax in float32 (the precision of float32 and
  // bfloat16 models); float64 and half inputs take the reference.
  const bool f32_softmax = (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16) &&
                           v.scalar_type() == q.scalar_type() && k.scalar_type() == q.scalar_type();
  const AttentionKernel kernel = g_kernel;
  // Plain causal attention on CUDA goes to SDPA (cuDNN / flash backends, GQA without repeated
  // K/V). Exact when the queries and keys share one increasing position tensor, as every
  // caller's arange does, and no window applies. On the CPU the blocked kernel measured as fast
  // as SDPA's (README, Performance), so the CPU keeps one code path.
  if (kernel == AttentionKernel::Flash && !key_keep.defined() && q.is_cuda() && q_pos.is_same(k_pos) &&
      sliding_window <= 0 && q.size(2) == k.size(2)) {
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, /*enable_gqa=*/true);
  }
  if (kernel == AttentionKernel::Flash && f32_softmax && flash_device(q)) {
    if (grad) {
      const at::Tensor keep = key_keep.defined() ? key_keep : at::empty({0}, q.options().dtype(at::kFloat));
      return FlashAttentionFn::apply(q, k, v, keep, q_pos, k_pos, sliding_window, recent_window, dense_until)[0];
    }
    return flash_forward({q, k, v, q_pos, k_pos, kernel_keep(key_keep), sliding_window, recent_window, dense_until}).out;
  }
  // The row kernels are CPU code and serve the gated path with gradients only.
  if (kernel == AttentionKernel::Rows && key_keep.defined() && grad && f32_softmax && q.is_cpu()) {
    auto [allowed, always] = structure(q_pos, k_pos, sliding_window, recent_window, dense_until);
    return MaskedAttentionFn::apply(q, k, v, key_keep, allowed.contiguous(), always.contiguous())[0];
  }
  return masked_attention_reference(q, k, v, q_pos, k_pos, key_keep, sliding_window, recent_window, dense_until);
}

at::Tensor masked_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& q_pos, const at::Tensor& k_pos, const at::Tensor& key_keep,
                                      int64_t sliding_window, int64_t recent_window, int64_t dense_until) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), hd = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  // Group the G query heads of each KV head as extra rows: [B, Hkv, G*Tq, hd] @ [B, Hkv, hd, Tk].
  at::Tensor qg = q.reshape({B, Hkv, G * Tq, hd});
  at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)).mul_(scale);   // [B, Hkv, G*Tq, Tk]
  scores = scores.view({B, Hkv, G, Tq, Tk});

  // Structural masks, [Tq, Tk] bool: allowed (causal + window), always (self + recent + dense).
  auto [allowed, always] = structure(q_pos, k_pos, sliding_window, recent_window, dense_until);

  // Softmax accumulates in float32 for reduced-precision inputs (as HF does), else in their type.
  const auto st = scores.scalar_type();
  const auto acc = (st == at::kBFloat16 || st == at::kHalf) ? at::kFloat : st;
  at::Tensor probs;
  if (!key_keep.defined()) {
    // Plain causal softmax (the base model); the softmax accumulates in float32 as HF's eager
    // attention does, without materialising float32 scores first.
    scores.masked_fill_(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    probs = at::softmax(scores, -1, acc);
  } else {
    scores = scores.to(acc);
    // M = allowed * (self ? 1 : keep[j]); keep: [B, Tk, Hkv] -> [B, Hkv, 1, 1, Tk].
    at::Tensor keep = key_keep.to(acc).permute({0, 2, 1}).reshape({B, Hkv, 1, 1, Tk});
    at::Tensor m = at::where(always, at::ones({}, keep.options()), keep);   // [B, Hkv, 1, Tq, Tk]
    m = m * allowed.to(acc);
    // Max over the visible keys only (detached: it cancels in the ratio).
    at::Tensor visible = (m > 0).detach();
    at::Tensor row_max = std::get<0>(
        scores.detach().masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity()).max(-1, true));
    // Hidden keys may score far above the visible max. Their e only feeds the gradient w.r.t. M
    // (forward: e * 0 == 0 exactly); capping it at the visible max (e <= 1) keeps that
    // surrogate gradient on the scale of real attention weights instead of exp(huge).
    at::Tensor e = (scores - row_max).clamp_max(0.0).exp();
    at::Tensor em = e * m;
    probs = em / em.sum(-1, true);
  }
  probs = probs.to(v.scalar_type()).view({B, Hkv, G * Tq, Tk});
  at::Tensor out = at::matmul(probs, v);  // [B, Hkv, G*Tq, hd]
  return out.view({B, H, Tq, hd});
}

}  // namespace agate
