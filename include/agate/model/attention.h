// Causal grouped-query attention with per-KV-head key visibility: the one attention kernel
// that the base model, the gates and every KV cache share.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace agate {

// q: [B, H, Tq, hd]; k, v: [B, Hkv, Tk, hd], H = Hkv * G (query head h reads KV head h / G, as
// HF's repeat_kv does; K/V are never repeated in memory).
// q_pos: [Tq], k_pos: [Tk] absolute int64 positions.
// key_keep: [B, Tk, Hkv] or undefined (= all kept). Values are 0/1 flags (possibly carrying a
//   straight-through gradient) or soft keep probabilities in (0, 1].
// Visibility M[i, j] at KV head g: 0 unless k_pos[j] <= q_pos[i] (causal) and, with a window,
//   q_pos[i] - k_pos[j] < sliding_window; then 1 if k_pos[j] == q_pos[i] (a token always sees
//   itself) or q_pos[i] - k_pos[j] < recent_window (an evicted token stays visible until it
//   leaves the recent window) or q_pos[i] < dense_until (the context queries of a
//   context/continuation split see every earlier key, whatever its flag), else key_keep[j, g].
// Attention: A_ij = e_ij M_ij / sum_k e_ik M_ik with e = exp(min(score - max over visible
//   keys, 0)), score = q.k / sqrt(hd), computed in float32 (float64 stays float64). With 0/1
//   flags the forward equals a hard mask and the gradient reaches key_keep through M, as
//   dL/dM_ij = e_ij g_ij with e capped at 1 for hidden keys (bounded: a hidden key that would
//   dominate gets the gradient of one as strong as the strongest visible key). With
//   probabilities p > 0 every key is visible and A equals softmax(score + log p) (the "soft"
//   relaxation).
// Returns [B, H, Tq, hd] in q's dtype.
// With gradients and a key_keep, this runs as one fused autograd node (closed-form backward,
// only e and M saved); masked_attention_reference is the same function composed of ATen ops
// (autograd derives its backward), the exact plain path the fused one is tested against.
at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& q_pos, const at::Tensor& k_pos,
                            const at::Tensor& key_keep, int64_t sliding_window = 0,
                            int64_t recent_window = 0, int64_t dense_until = 0);
at::Tensor masked_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& q_pos, const at::Tensor& k_pos,
                                      const at::Tensor& key_keep, int64_t sliding_window = 0,
                                      int64_t recent_window = 0, int64_t dense_until = 0);
// Attention statistics the rules and the gates' rule feature read (src/model/attention_received.cpp),
// from the full-cache causal softmax, in float32; `...` is any number of leading batch dims.
// causal_attention_probs: queries at positions [first, first + Tq) over keys [0, T).
//   q: [..., Hkv, G, Tq, hd], k: [..., Hkv, T, hd] -> [..., Hkv, G, Tq, T] (query head g of KV head h
//   is model head h * G + g).
at::Tensor causal_attention_probs(const at::Tensor& q, const at::Tensor& k, int64_t first);
// The attention each key receives from the queries at positions [0, n_queries), summed over
// those queries per query head (H2O's statistic): q: [..., Hkv, G, Tq >= n_queries, hd],
// k: [..., Hkv, T, hd] -> [..., Hkv, G, T] float32. Blocks of 256 query rows bound the memory.
at::Tensor attention_received(const at::Tensor& q, const at::Tensor& k, int64_t n_queries);

// Which implementation masked_attention uses (process-wide; the others stay for tests and
// benchmarks):
//   Flash     (default) blocked kernels, memory linear in T (src/model/flash_attention.h):
//             forward, and with gradients one autograd node whose backward recomputes the
//             scores tile by tile; CPU and (built with CUDA) CUDA tensors; plain causal
//             attention on CUDA (no key_keep, q_pos and k_pos the same tensor, no window) is
//             SDPA's;
//   Rows      the previous fused node: T x T scores, row kernels, CPU tensors with gradients only;
//   Reference masked_attention_reference everywhere.
// A path that does not apply to the inputs falls back to the reference.
enum class AttentionKernel { Flash, Rows, Reference };
void set_attention_kernel(AttentionKernel kernel);
AttentionKernel attention_kernel();
// "flash", "rows", "reference" <-> AttentionKernel; parse throws a usage error naming the choices.
AttentionKernel parse_attention_kernel(const std::string& name);
const char* attention_kernel_name(AttentionKernel kernel);

}  // namespace agate
