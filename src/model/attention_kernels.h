// Row kernels of the fused gated attention (model-internal header). One pass per row instead
// of a dozen full-tensor passes: the visibility mask M is rebuilt on the fly from the keep
// flags and the [Tq, Tk] structure, so it is never materialised.
//
// Shapes: rows are (b, kv head, query group member, query i) in that order, R = B*Hkv*G*Tq.
//   s, e, da, ds: [R, Tk] float32; z: [R] float32; keep: [B, Tk, Hkv] float32;
//   allowed, always: [Tq, Tk] bool; a: [R, Tk] float32 or bfloat16; dkeep: [B, Tk, Hkv] float32.
// M_ij = allowed_ij ? (always_ij ? 1 : keep_j) : 0.
#pragma once

#include <ATen/core/Tensor.h>

namespace agate::kernels {

// e = exp(min(s - max over visible s, 0)) (written over s), z = sum e M, a = e M / z.
void gated_softmax_forward(at::Tensor& s, const at::Tensor& keep, const at::Tensor& allowed,
                           const at::Tensor& always, int64_t G, at::Tensor& z, at::Tensor& a);

// From dA: a = e M / z (for dV), g = (dA - sum dA a) / z, dS = g e M * scale (written over da),
// dkeep_j += g e over the rows that read key j through its flag.
void gated_softmax_backward(at::Tensor& da, const at::Tensor& e, const at::Tensor& z, const at::Tensor& keep,
                            const at::Tensor& allowed, const at::Tensor& always, int64_t G, double scale,
                            at::Tensor& a, at::Tensor& dkeep);

}  // namespace agate::kernels
