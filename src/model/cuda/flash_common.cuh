// Shared pieces of agate's CUDA flash attention kernels (flash_fma.cuh, flash_tc.cuh; host side
// and dispatch in flash_attention.cu): the kernel parameters, the mask of the contract
// (flash_attention.h), the tile-skipping test and the D = dout . out row kernel.
#pragma once

#include <cmath>
#include <cstdint>

namespace agate::kernels {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kRowDotThreads = 256;  // row_dot_kernel: one warp per row

struct Params {
  int64_t B, H, Hkv, G, Tq, Tk, hd, R;  // R = G * Tq rows per (b, KV head)
  float scale;
  int64_t sw, rw, du;  // sliding window, recent window, dense_until
  const int64_t* qp;  // [Tq]
  const int64_t* kp;  // [Tk]
  const float* keep;  // [B, Hkv, Tk] or nullptr (every key kept)
  bool vec;           // bfloat16 rows may be read as 16-byte vectors (hd % 8 == 0, aligned bases)
};

// M for query position qp against key position kp (header: allowed / always / keep); flagged =
// allowed && !always (the key is seen through its keep value; dkeep gathers there).
__device__ __forceinline__ float mask_value(int64_t qp, int64_t kp, float keepv, const Params& p, bool& flagged) {
  const int64_t d = qp - kp;
  const bool allowed = d >= 0 && (p.sw <= 0 || d < p.sw);
  const bool always = d == 0 || (p.rw > 0 && d < p.rw) || qp < p.du;
  flagged = allowed && !always;
  return !allowed ? 0.0f : (always ? 1.0f : keepv);
}

// Whether any query in [qlo, qhi] may see (allowed) any key in [klo, khi].
__device__ __forceinline__ bool tile_visible(int64_t qlo, int64_t qhi, int64_t klo, int64_t khi, const Params& p) {
  if (qlo > qhi || klo > khi) return false;  // no valid row or key
  if (klo > qhi) return false;               // every key after every query
  if (p.sw > 0 && qlo - khi >= p.sw) return false;  // every key out of every query's window
  return true;
}

// ---------------------------------------------------------------------------------------------
// D_i = dout_i . out_i, one warp per row of [rows, hd].
template <typename T>
__global__ void __launch_bounds__(kRowDotThreads)
    row_dot_kernel(const T* __restrict__ dout, const T* __restrict__ out, float* __restrict__ dd, int64_t rows,
                   int64_t hd) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kRowDotThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // uniform per warp
  float acc = 0.0f;
  for (int64_t d = lane; d < hd; d += 32) {
    acc = fmaf(static_cast<float>(dout[row * hd + d]), static_cast<float>(out[row * hd + d]), acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) dd[row] = acc;
}

// The per-element backward quantities of one (row, key) pair of a 32 x 32 tile: s (unscaled dot),

}  // namespace
}  // namespace agate::kernels
