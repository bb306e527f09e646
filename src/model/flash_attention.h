// Blocked ("flash") gated attention (model-internal header): the semantics of
// masked_attention (agate/model/attention.h) without any Tq x Tk buffer. The forward keeps,
// per query row, only the output, the row max m over visible keys and the row sum z; the
// backward recomputes the scores tile by tile from them.
//
// Shapes (all tensors on one device; CPU twin in flash_attention_cpu.cpp, CUDA twin in
// cuda/flash_attention.cu):
//   q: [B, H, Tq, hd]; k, v: [B, Hkv, Tk, hd] (H = Hkv * G; float32 or bfloat16, one dtype);
//   q_pos: [Tq], k_pos: [Tk] int64 absolute positions;
//   keep: [B, Hkv, Tk] float32 contiguous (note: KV head before key, unlike key_keep), or
//         undefined = every key kept (plain causal/windowed attention, no dkeep);
//   out: [B, H, Tq, hd] in q's dtype; m, z: [B, H, Tq] float32.
// Visibility, per (query i, key j, KV head g):
//   allowed = k_pos[j] <= q_pos[i] && (sliding_window <= 0 || q_pos[i] - k_pos[j] < sliding_window)
//   always  = k_pos[j] == q_pos[i] || (recent_window > 0 && q_pos[i] - k_pos[j] < recent_window)
//             || q_pos[i] < dense_until
//   M_ij    = allowed ? (always ? 1 : keep[b, g, j]) : 0;   visible = M_ij > 0.
// Forward: s_ij = scale * q_i . k_j (float32 accumulation), m_i = max over visible s_ij (0 when
//   no key is visible), e_ij = exp(min(s_ij - m_i, 0)), z_i = sum_j e_ij M_ij,
//   out_i = sum_j e_ij M_ij v_j / z_i.
// Backward, with D_i = dout_i . out_i and dA_ij = dout_i . v_j:
//   g_ij = (dA_ij - D_i) / z_i;  dS_ij = g_ij e_ij M_ij;
//   dq_i = scale sum_j dS_ij k_j;  dk_j = scale sum_i dS_ij q_i (summed over the G query heads);
//   dv_j = sum_i (e_ij M_ij / z_i) dout_i;
//   dkeep[b, g, j] = sum over rows i (all G heads) with allowed && !always of g_ij e_ij
//   (e_ij <= 1 also for hidden keys: the bounded straight-through gradient).
// dq in q's dtype, dk/dv in k's dtype, dkeep float32 [B, Hkv, Tk] (undefined without keep).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace agate::kernels {

struct FlashArgs {
  at::Tensor q, k, v, q_pos, k_pos, keep;
  int64_t sliding_window = 0;
  int64_t recent_window = 0;
  int64_t dense_until = 0;  // queries at positions below it see every allowed key (flags ignored)
};

struct FlashForward {
  at::Tensor out, m, z;
};

struct FlashGrads {
  at::Tensor dq, dk, dv, dkeep;
};

FlashForward flash_forward_cpu(const FlashArgs& a);
FlashGrads flash_backward_cpu(const FlashArgs& a, const FlashForward& f, const at::Tensor& dout);

#ifdef AGATE_USE_CUDA
// Same contract on CUDA tensors; enqueued on the current stream, never waits for the device.
FlashForward flash_forward_cuda(const FlashArgs& a);
FlashGrads flash_backward_cuda(const FlashArgs& a, const FlashForward& f, const at::Tensor& dout);
#endif

}  // namespace agate::kernels
