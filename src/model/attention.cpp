#include "agate/model/attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace agate {

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& q_pos, const at::Tensor& k_pos,
                            const at::Tensor& key_keep, int64_t sliding_window, int64_t recent_window) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), hd = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  // Group the G query heads of each KV head as extra rows: [B, Hkv, G*Tq, hd] @ [B, Hkv, hd, Tk].
  at::Tensor qg = q.reshape({B, Hkv, G * Tq, hd});
  at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)).mul_(scale);   // [B, Hkv, G*Tq, Tk]
  scores = scores.view({B, Hkv, G, Tq, Tk});

  // Structural mask (causal + window): [Tq, Tk] bool.
  at::Tensor qp = q_pos.view({Tq, 1}), kp = k_pos.view({1, Tk});
  at::Tensor allowed = kp <= qp;
  if (sliding_window > 0) allowed = allowed.logical_and(qp - kp < sliding_window);

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
    at::Tensor always = (qp == kp);                                         // [Tq, Tk]
    if (recent_window > 0) always = always.logical_or(qp - kp < recent_window);
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
