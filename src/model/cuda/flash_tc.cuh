// The tensor-core kernels of agate's CUDA flash attention (flash_attention.cu dispatches): bfloat16
// inputs with head dims up to kTcMaxHeadDim (float32 inputs, and bfloat16 above that head dim,
// take the FMA kernels of flash_fma.cuh). Same contract (flash_attention.h), same row order and
// tile skipping as the FMA kernels; only the tile products differ.
//
// Arithmetic. Tile products on tensor cores through nvcuda::wmma, m16n16k16, bfloat16 inputs,
// float32 accumulation: S = Q K^T, O += P V (forward), dP = dO V^T, dV += P^T dO, dK += dS^T Q,
// dQ += dS K (backward). P and dS are rounded to bfloat16 for their products (as in every
// bfloat16 flash kernel); everything else (scale, mask, exp, row max and sums, D, dkeep) is
// float32 from the float32 accumulators. WMMA rather than inline mma.sync PTX: the fragment
// layout stays opaque, which costs a trip through shared memory for the row-wise softmax work,
// but the code is portable across sm_80 / sm_90 and can be emulated on the CPU
// (tools/flash_cuda_emu: a scrambled fragment layout there checks that no layout is assumed).
//
// Geometry. 4 warps (128 threads) a block; each warp owns 16 rows (forward, dQ) or 16 keys
// (dK/dV) of the block's tile, so all row-wise work (mask, max, exp, sums, dkeep) is warp-local
// and needs only __syncwarp; __syncthreads only guards the shared K/V (or Q/dO) tiles.
//   forward:  64 rows x 64-key tiles;  dK/dV: 64 keys x 32-row tiles;  dQ: 64 rows x 32-key tiles.
// Head dim padded to D in {32, 64, 96, 128} (zeros). Shared memory: metadata (row/key index,
// position, keep, m, 1/z, D, per-warp position ranges), bfloat16 tiles [rows][D + 8] (the +8
// skews wmma's row reads over the banks), and per warp a float32 score tile [16][N + 4] and
// bfloat16 P / dS tiles [16][N + 8]. Bytes per block (the Tc* layouts below):
//   D = 32: forward 45,184, dK/dV 46,336, dQ 41,472;  D = 64: 57,472, 58,624, 53,760;
//   D = 96: 69,760, 70,912, 66,048;  D = 128: 82,048, 83,200, 78,336
// (under the 99 KiB per-block opt-in limit of every sm_80+ device; checked at launch).
// Registers (ptxas, nvcc 13, no spills): sm_80 forward 96 / 124 / 126 / 168 (D = 32 / 64 / 96 /
// 128), dK/dV 120 / 158 / 168 / 254, dQ 94 / 124 / 128 / 166; sm_90 forward 84 / 128 / 128 /
// 166, dK/dV 120 / 128 / 167 / 254, dQ 80 / 127 / 126 / 124. The score and accumulate loops
// over 16-column blocks stay rolled: unrolled, ptxas hoists their fragment loads and spills.
// Row-wise work on a warp's [16][N] score tile: lane l takes row l / 2 and every other column
// (l % 2, +2, ...), rows 8..15 starting one column pair later: with row strides of 4 mod 32 words
// the 32 lanes hit 32 different banks. A row's two lanes combine with one xor-shuffle.
// Tile skipping: as the FMA kernels (whole block tile invisible: positions), plus per warp (its 16
// rows or keys against the tile): a skipped pair has M = 0 and no flag reads everywhere. Tiles
// whose keys are all evicted are not skipped (hidden keys still get dkeep); the forward skips only
// the P V product of a warp whose rows see no key of the tile.
//
// Forward: online softmax with a lazy reference max: p = exp(s - m_ref) M, where m_ref moves to
// the running max only when that exceeds it by more than kRescaleSlack (then o and z are rescaled
// through shared memory, the fragments being opaque); so p <= e^8 and the rescale round trip is
// rare (typically a few times per row). At the end m = running max, z = z_ref exp(m_ref - m),
// out = o / z_ref.
// Backward (the three launches of the FMA path: D = rowsum(dout * out), then dK/dV/dkeep, then
// dQ): per element exactly backward_element's formulas (e = exp(min(s - m, 0)) <= 1 also for
// hidden keys, g = (dA - D) / z, P = e M / z, dS = g e M, dkeep += g e where flagged). The dK/dV
// kernel owns each key (dK, dV, dkeep written once: lanes accumulate dkeep in a fixed order and
// a row's two lanes add once); the dQ kernel owns each row. No atomics: every result is bitwise
// reproducible.
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include "flash_common.cuh"

namespace agate::kernels {
namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;   // [k][n] rows
using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;  // [n][k] rows
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcMaxHeadDim = 128;
constexpr float kRescaleSlack = 8.0f;  // natural-log units: p <= e^8 between rescales
constexpr unsigned kFullMask = 0xffffffffu;

template <int D>
constexpr int kTcLd = D + 8;  // bfloat16 row stride of [rows][D] tiles
template <int N>
constexpr int kScoreLd = N + 4;  // float row stride of a warp's [16][N] score tile (4 mod 32 words)
template <int N>
constexpr int kProbLd = N + 8;  // bfloat16 row stride of a warp's [16][N] P / dS tile

constexpr size_t round128(size_t x) { return (x + 127) / 128 * 128; }

// Metadata of NR rows and NK keys (index -1 = past the end) and the per-warp position ranges
// of the entries (lo > hi when none is valid).
template <int NR, int NK>
struct TcMeta {
  int64_t qrow[NR], qpos[NR], krow[NK], kpos[NK];
  int64_t qlo[NR / 32], qhi[NR / 32], klo[NK / 32], khi[NK / 32];
  float m[NR], invz[NR], dd[NR], keep[NK];
};

// Shared memory carving of the three kernels: offsets in bytes, each 128-byte aligned.
// kind 1: forward (S, P per warp); 2: dQ (dout tile; S, dP, dS per warp); 3: dK/dV (dout tile;
// S^T, dP^T, P^T, dS^T per warp).
template <int D, int NR, int NK, int kTilesPerWarp>
struct TcLayout {
  using Meta = TcMeta<NR, NK>;
  static constexpr int kRows = NR, kKeys = NK;
  static constexpr int kWarpCols = NR == 64 ? NK : NR;  // columns of a warp's score tile
  static constexpr size_t kRowTile = round128(size_t{NR} * kTcLd<D> * 2);
  static constexpr size_t kKeyTile = round128(size_t{NK} * kTcLd<D> * 2);
  static constexpr size_t kScore = round128(16 * kScoreLd<kWarpCols> * 4);  // per warp
  static constexpr size_t kProb = round128(16 * kProbLd<kWarpCols> * 2);    // per warp
  static constexpr size_t kQ = round128(sizeof(Meta));
  static constexpr size_t kO = kQ + kRowTile;          // dout (backward only)
  static constexpr size_t kK = kO + (kTilesPerWarp == 1 ? 0 : kRowTile);
  static constexpr size_t kV = kK + kKeyTile;
  static constexpr size_t kS = kV + kKeyTile;          // kTcWarps score tiles
  static constexpr size_t kDP = kS + kTcWarps * kScore;  // dP tiles (backward only)
  static constexpr size_t kP = kDP + (kTilesPerWarp == 1 ? 0 : kTcWarps * kScore);
  static constexpr size_t kDS = kP + kTcWarps * kProb;  // dS tiles (dK/dV only)
  static constexpr size_t kBytes = kDS + (kTilesPerWarp == 3 ? kTcWarps * kProb : 0);
};
template <int D>
using TcForward = TcLayout<D, 64, 64, 1>;     // 64 rows, 64-key tiles: S, P per warp
template <int D>
using TcBackwardKV = TcLayout<D, 32, 64, 3>;  // 64 keys, 32-row tiles: S^T, dP^T, P^T, dS^T
template <int D>
using TcBackwardQ = TcLayout<D, 64, 32, 2>;   // 64 rows, 32-key tiles: S, dP, dS (in the P slot)

// Position range over a warp: lane holds one entry.
__device__ __forceinline__ void warp_range(bool valid, int64_t pos, int64_t& lo, int64_t& hi) {
  lo = valid ? pos : INT64_MAX;
  hi = valid ? pos : INT64_MIN;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const int64_t l = __shfl_xor_sync(kFullMask, lo, off), h = __shfl_xor_sync(kFullMask, hi, off);
    lo = l < lo ? l : lo;
    hi = h > hi ? h : hi;
  }
}

// Range over N entries from the per-warp partials.
template <int N>
__device__ __forceinline__ void merge_range(const int64_t* lo_part, const int64_t* hi_part, int64_t& lo, int64_t& hi) {
  lo = INT64_MAX;
  hi = INT64_MIN;
#pragma unroll
  for (int w = 0; w < N / 32; ++w) {
    lo = lo_part[w] < lo ? lo_part[w] : lo;
    hi = hi_part[w] > hi ? hi_part[w] : hi;
  }
}

// Row metadata of the NR rows from r0 (as fill_rows of the FMA kernels) and, with m given,
// their stats (m, 1/z, D; 0 past the end). Threads t < NR, whole warps.
template <int NR, int NK>
__device__ __forceinline__ void tc_fill_rows(TcMeta<NR, NK>& s, const Params& p, int64_t b, int64_t g, int64_t r0,
                                             const float* m, const float* z, const float* dd) {
  const int t = threadIdx.x;
  if (t < NR) {
    const int64_t r = r0 + t;
    const bool ok = r < p.R;
    int64_t row = -1, pos = 0;
    if (ok) {
      const int64_t i = r / p.G, hq = r % p.G;
      row = (b * p.H + g * p.G + hq) * p.Tq + i;
      pos = p.qp[i];
    }
    s.qrow[t] = row;
    s.qpos[t] = pos;
    if (m != nullptr) {
      const float zr = ok ? z[row] : 0.0f;
      s.m[t] = ok ? m[row] : 0.0f;
      s.invz[t] = zr > 0.0f ? 1.0f / zr : 0.0f;
      s.dd[t] = ok ? dd[row] : 0.0f;
    }
    int64_t lo, hi;
    warp_range(ok, pos, lo, hi);
    if (t % 32 == 0) {
      s.qlo[t / 32] = lo;
      s.qhi[t / 32] = hi;
    }
  }
}

// Key metadata of the NK keys from j0 (as fill_keys of the FMA kernels). Threads t < NK.
template <int NR, int NK>
__device__ __forceinline__ void tc_fill_keys(TcMeta<NR, NK>& s, const Params& p, int64_t b, int64_t g, int64_t j0) {
  const int t = threadIdx.x;
  if (t < NK) {
    const int64_t j = j0 + t;
    const bool ok = j < p.Tk;
    const int64_t kr = (b * p.Hkv + g) * p.Tk + j;
    const int64_t pos = ok ? p.kp[j] : 0;
    s.krow[t] = ok ? kr : -1;
    s.kpos[t] = pos;
    s.keep[t] = ok && p.keep != nullptr ? p.keep[kr] : 1.0f;
    int64_t lo, hi;
    warp_range(ok, pos, lo, hi);
    if (t % 32 == 0) {
      s.klo[t / 32] = lo;
      s.khi[t / 32] = hi;
    }
  }
}

// Position range of the 16 entries from e0 (a warp's rows or keys); every lane of the warp calls.
__device__ __forceinline__ void warp16_range(const int64_t* idx, const int64_t* pos, int e0, int64_t& lo, int64_t& hi) {
  const int e = e0 + threadIdx.x % 16;
  warp_range(idx[e] >= 0, pos[e], lo, hi);
}

// dst[r][c] (row stride D + 8) = src[row[r] * hd + c] for c < hd; 0 in the padding columns
// c < D and in rows with row[r] < 0. 16-byte vectors when p.vec, else element by element.
template <int D, int N>
__device__ __forceinline__ void tc_load_tile(bf16* __restrict__ dst, const bf16* __restrict__ src,
                                             const int64_t* __restrict__ row, const Params& p) {
  constexpr int LD = kTcLd<D>;
  if (p.vec) {
    constexpr int C = D / 8;
    for (int idx = threadIdx.x; idx < N * C; idx += kTcThreads) {
      const int r = idx / C, c = (idx % C) * 8;
      const int64_t rr = row[r];
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (rr >= 0 && c < p.hd) val = *reinterpret_cast<const uint4*>(src + rr * p.hd + c);
      *reinterpret_cast<uint4*>(dst + r * LD + c) = val;
    }
  } else {
    for (int idx = threadIdx.x; idx < N * D; idx += kTcThreads) {
      const int r = idx / D, c = idx % D;
      const int64_t rr = row[r];
      dst[r * LD + c] = (rr >= 0 && c < p.hd) ? src[rr * p.hd + c] : __float2bfloat16_rn(0.0f);
    }
  }
}

// Column of the j-th element (j < N / 2) of a lane's row r in a warp's [16][N] tile (see top).
template <int N>
__device__ __forceinline__ int tc_col(int j, int r, int h) {
  return 2 * ((j + (r >> 3)) % (N / 2)) + h;
}

// C[16][N] = A[16][D] B[N][D]^T (A rows a, B rows b, stride kTcLd<D>) into the warp's float
// tile c (stride kScoreLd<N>).
template <int D, int N>
__device__ __forceinline__ void tc_scores(const bf16* a, const bf16* b, float* c) {
  constexpr int LD = kTcLd<D>;
#pragma unroll 1  // rolled (as the kk loop below): unrolled, ptxas hoists loads and spills
  for (int n = 0; n < N / 16; ++n) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
      FragA fa;
      FragBt fb;
      wmma::load_matrix_sync(fa, a + kd * 16, LD);
      wmma::load_matrix_sync(fb, b + n * 16 * LD + kd * 16, LD);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + n * 16, acc, kScoreLd<N>, wmma::mem_row_major);
  }
}

// acc[f] += A[16][N] B[N][D] (A: a warp's bfloat16 tile, stride kProbLd<N>; B rows stride kTcLd<D>).
template <int D, int N>
__device__ __forceinline__ void tc_accumulate(FragC (&acc)[D / 16], const bf16* a, const bf16* b) {
#pragma unroll 1
  for (int kk = 0; kk < N / 16; ++kk) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + kk * 16, kProbLd<N>);
#pragma unroll
    for (int f = 0; f < D / 16; ++f) {
      FragB fb;
      wmma::load_matrix_sync(fb, b + kk * 16 * kTcLd<D> + f * 16, kTcLd<D>);
      wmma::mma_sync(acc[f], fa, fb, acc[f]);
    }
  }
}

// Writes the warp's [16][D] accumulator (times mul) as bfloat16 to dst rows idx[e0 + r] (-1:
// skipped), columns < hd, staged 16 columns at a time through the warp's float tile st
// (stride SLD).
template <int D, int SLD>
__device__ __forceinline__ void tc_write_rows(FragC (&acc)[D / 16], float* st, const int64_t* idx, int e0, float mul,
                                              bf16* __restrict__ dst, int64_t hd) {
  const int lane = threadIdx.x % 32, r = lane >> 1, c0 = (lane & 1) * 8;
  const int64_t row = idx[e0 + r];
#pragma unroll
  for (int f = 0; f < D / 16; ++f) {
    __syncwarp();
    wmma::store_matrix_sync(st, acc[f], SLD, wmma::mem_row_major);
    __syncwarp();
    if (row >= 0) {
#pragma unroll
      for (int c = c0; c < c0 + 8; ++c) {
        const int d = f * 16 + c;
        if (d < hd) dst[row * hd + d] = __float2bfloat16_rn(st[r * SLD + c] * mul);
      }
    }
  }
  __syncwarp();
}

// ---------------------------------------------------------------------------------------------
// Forward. grid (ceil(R / 64), Hkv, B); out [B, H, Tq, hd]; m, z [B, H, Tq].
template <int D>
__global__ void __launch_bounds__(kTcThreads)
    flash_forward_tc_kernel(Params p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                            const bf16* __restrict__ v, bf16* __restrict__ out, float* __restrict__ m_out,
                            float* __restrict__ z_out) {
  using L = TcForward<D>;
  constexpr int LD = kTcLd<D>, NF = D / 16, N = L::kKeys, SLD = kScoreLd<N>, PLD = kProbLd<N>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<typename L::Meta*>(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw + L::kQ);
  bf16* sK = reinterpret_cast<bf16*>(smem_raw + L::kK);
  bf16* sV = reinterpret_cast<bf16*>(smem_raw + L::kV);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* sS = reinterpret_cast<float*>(smem_raw + L::kS + warp * L::kScore);
  bf16* sP = reinterpret_cast<bf16*>(smem_raw + L::kP + warp * L::kProb);
  const int64_t b = blockIdx.z, g = blockIdx.y;
  // Last row tiles first: under causal positions they see the most keys.
  const int64_t r0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * L::kRows;

  tc_fill_rows(s, p, b, g, r0, nullptr, nullptr, nullptr);
  __syncthreads();
  tc_load_tile<D, L::kRows>(sQ, q, s.qrow, p);
  int64_t qlo, qhi, wqlo, wqhi;
  merge_range<L::kRows>(s.qlo, s.qhi, qlo, qhi);
  warp16_range(s.qrow, s.qpos, warp * 16, wqlo, wqhi);
  const int rr = lane >> 1, h = lane & 1;  // the lane's row in the warp's tile, its column parity
  const int row = warp * 16 + rr;
  const bool row_ok = s.qrow[row] >= 0;
  const int64_t row_pos = s.qpos[row];
  const bf16* sQw = sQ + warp * 16 * LD;

  const float neg_inf = -INFINITY;
  FragC o[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(o[f], 0.0f);
  float m_max = neg_inf;  // running max over the visible keys
  float m_ref = neg_inf;  // the max that p, o and z are relative to (lags m_max by <= the slack)
  float z = 0.0f;

  for (int64_t j0 = 0; j0 < p.Tk; j0 += N) {
    __syncthreads();  // every warp is done with the previous tile's K, V and key metadata
    tc_fill_keys(s, p, b, g, j0);
    __syncthreads();
    int64_t klo, khi;
    merge_range<N>(s.klo, s.khi, klo, khi);
    if (!tile_visible(qlo, qhi, klo, khi, p)) continue;  // uniform in the block
    tc_load_tile<D, N>(sK, k, s.krow, p);
    tc_load_tile<D, N>(sV, v, s.krow, p);
    __syncthreads();
    if (!tile_visible(wqlo, wqhi, klo, khi, p)) continue;  // uniform in the warp; no barrier until the loop top

    tc_scores<D, N>(sQw, sK, sS);
    __syncwarp();
    // The tile max over visible keys.
    float tmax = neg_inf;
#pragma unroll 4
    for (int j = 0; j < N / 2; ++j) {
      const int c = tc_col<N>(j, rr, h);
      bool flagged;
      const float mk = (row_ok && s.krow[c] >= 0) ? mask_value(row_pos, s.kpos[c], s.keep[c], p, flagged) : 0.0f;
      if (mk > 0.0f) tmax = fmaxf(tmax, sS[rr * SLD + c] * p.scale);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(kFullMask, tmax, 1));
    if (!__any_sync(kFullMask, tmax > neg_inf)) continue;  // the warp's rows see no key here: P = 0
    m_max = fmaxf(m_max, tmax);
    float alpha = 1.0f;  // rescales o and z when the reference moves
    bool rescale = false;
    if (m_max > m_ref + kRescaleSlack) {  // also the first visible key (m_ref = -inf: o = 0, z = 0)
      rescale = m_ref != neg_inf;
      alpha = rescale ? expf(m_ref - m_max) : 0.0f;
      m_ref = m_max;
    }
    // p = exp(s - m_ref) M (a select: a hidden key's exp never meets a zero), sums in float32.
    float psum = 0.0f;
#pragma unroll 4
    for (int j = 0; j < N / 2; ++j) {
      const int c = tc_col<N>(j, rr, h);
      bool flagged;
      const float mk = (row_ok && s.krow[c] >= 0) ? mask_value(row_pos, s.kpos[c], s.keep[c], p, flagged) : 0.0f;
      const float pv = mk > 0.0f ? expf(sS[rr * SLD + c] * p.scale - m_ref) * mk : 0.0f;
      sP[rr * PLD + c] = __float2bfloat16_rn(pv);
      psum += pv;
    }
    psum += __shfl_xor_sync(kFullMask, psum, 1);
    z = z * alpha + psum;
    __syncwarp();  // sS read, sP written
    if (__any_sync(kFullMask, rescale)) {
      // o *= alpha row-wise: through the (free) score tile, 16 columns at a time.
#pragma unroll
      for (int f = 0; f < NF; ++f) {
        wmma::store_matrix_sync(sS, o[f], SLD, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int c = h * 8; c < h * 8 + 8; ++c) sS[rr * SLD + c] *= alpha;
        __syncwarp();
        wmma::load_matrix_sync(o[f], sS, SLD, wmma::mem_row_major);
        __syncwarp();
      }
    }
    tc_accumulate<D, N>(o, sP, sV);  // o += P V
  }

  __syncwarp();
  tc_write_rows<D, SLD>(o, sS, s.qrow, warp * 16, z > 0.0f ? 1.0f / z : 0.0f, out, p.hd);
  if (row_ok && h == 0) {
    const int64_t orow = s.qrow[row];
    m_out[orow] = m_max == neg_inf ? 0.0f : m_max;
    z_out[orow] = m_max == neg_inf ? 0.0f : z * expf(m_ref - m_max);
  }
}

// ---------------------------------------------------------------------------------------------
// dK, dV, dkeep. grid (ceil(Tk / 64), Hkv, B); dk, dv [B, Hkv, Tk, hd]; dkeep [B, Hkv, Tk] or null.
template <int D>
__global__ void __launch_bounds__(kTcThreads)
    flash_backward_kv_tc_kernel(Params p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                                const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ m,
                                const float* __restrict__ z, const float* __restrict__ dd, bf16* __restrict__ dk,
                                bf16* __restrict__ dv, float* __restrict__ dkeep) {
  using L = TcBackwardKV<D>;
  constexpr int LD = kTcLd<D>, NF = D / 16, N = L::kRows, SLD = kScoreLd<N>, PLD = kProbLd<N>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<typename L::Meta*>(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw + L::kQ);
  bf16* sO = reinterpret_cast<bf16*>(smem_raw + L::kO);
  bf16* sK = reinterpret_cast<bf16*>(smem_raw + L::kK);
  bf16* sV = reinterpret_cast<bf16*>(smem_raw + L::kV);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* sS = reinterpret_cast<float*>(smem_raw + L::kS + warp * L::kScore);    // S^T [16 keys][32 rows]
  float* sDP = reinterpret_cast<float*>(smem_raw + L::kDP + warp * L::kScore);  // dP^T
  bf16* sPt = reinterpret_cast<bf16*>(smem_raw + L::kP + warp * L::kProb);      // P^T
  bf16* sDSt = reinterpret_cast<bf16*>(smem_raw + L::kDS + warp * L::kProb);    // dS^T
  const int64_t b = blockIdx.z, g = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * L::kKeys;

  tc_fill_keys(s, p, b, g, j0);
  __syncthreads();
  tc_load_tile<D, L::kKeys>(sK, k, s.krow, p);
  tc_load_tile<D, L::kKeys>(sV, v, s.krow, p);
  int64_t klo, khi, wklo, wkhi;
  merge_range<L::kKeys>(s.klo, s.khi, klo, khi);
  warp16_range(s.krow, s.kpos, warp * 16, wklo, wkhi);
  const int kr = lane >> 1, h = lane & 1;  // the lane's key in the warp's tile, its column parity
  const int key = warp * 16 + kr;
  const bool key_ok = s.krow[key] >= 0;
  const int64_t key_pos = s.kpos[key];
  const float key_keep = s.keep[key];
  const bf16* sKw = sK + warp * 16 * LD;
  const bf16* sVw = sV + warp * 16 * LD;

  FragC acc_k[NF], acc_v[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) {
    wmma::fill_fragment(acc_k[f], 0.0f);
    wmma::fill_fragment(acc_v[f], 0.0f);
  }
  float keep_part = 0.0f;  // this lane's share of dkeep of its key

  for (int64_t r0 = 0; r0 < p.R; r0 += N) {
    __syncthreads();  // every warp is done with the previous row tile
    tc_fill_rows(s, p, b, g, r0, m, z, dd);
    __syncthreads();
    int64_t qlo, qhi;
    merge_range<N>(s.qlo, s.qhi, qlo, qhi);
    if (!tile_visible(qlo, qhi, klo, khi, p)) continue;  // uniform in the block
    tc_load_tile<D, N>(sQ, q, s.qrow, p);
    tc_load_tile<D, N>(sO, dout, s.qrow, p);
    __syncthreads();
    if (!tile_visible(qlo, qhi, wklo, wkhi, p)) continue;  // uniform in the warp

    tc_scores<D, N>(sKw, sQ, sS);   // S^T = K Q^T
    tc_scores<D, N>(sVw, sO, sDP);  // dP^T = V dO^T
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < N / 2; ++j) {
      const int c = tc_col<N>(j, kr, h);  // the row of the row tile
      bool flagged = false;
      const float mk = (key_ok && s.qrow[c] >= 0) ? mask_value(s.qpos[c], key_pos, key_keep, p, flagged) : 0.0f;
      const float e = expf(fminf(sS[kr * SLD + c] * p.scale - s.m[c], 0.0f));  // <= 1, also for hidden keys
      const float gg = (sDP[kr * SLD + c] - s.dd[c]) * s.invz[c];
      sPt[kr * PLD + c] = __float2bfloat16_rn(e * mk * s.invz[c]);
      sDSt[kr * PLD + c] = __float2bfloat16_rn(gg * e * mk);
      if (flagged) keep_part += gg * e;
    }
    __syncwarp();
    tc_accumulate<D, N>(acc_v, sPt, sO);   // dV += P^T dO
    tc_accumulate<D, N>(acc_k, sDSt, sQ);  // dK += dS^T Q
  }

  __syncwarp();
  tc_write_rows<D, SLD>(acc_k, sS, s.krow, warp * 16, p.scale, dk, p.hd);
  tc_write_rows<D, SLD>(acc_v, sS, s.krow, warp * 16, 1.0f, dv, p.hd);
  if (dkeep != nullptr) {
    const float sum = keep_part + __shfl_xor_sync(kFullMask, keep_part, 1);  // the same in both lanes
    if (key_ok && h == 0) dkeep[s.krow[key]] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// dQ. grid (ceil(R / 64), Hkv, B); dq [B, H, Tq, hd].
template <int D>
__global__ void __launch_bounds__(kTcThreads)
    flash_backward_q_tc_kernel(Params p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                               const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ m,
                               const float* __restrict__ z, const float* __restrict__ dd, bf16* __restrict__ dq) {
  using L = TcBackwardQ<D>;
  constexpr int LD = kTcLd<D>, NF = D / 16, N = L::kKeys, SLD = kScoreLd<N>, PLD = kProbLd<N>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<typename L::Meta*>(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw + L::kQ);
  bf16* sO = reinterpret_cast<bf16*>(smem_raw + L::kO);
  bf16* sK = reinterpret_cast<bf16*>(smem_raw + L::kK);
  bf16* sV = reinterpret_cast<bf16*>(smem_raw + L::kV);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* sS = reinterpret_cast<float*>(smem_raw + L::kS + warp * L::kScore);
  float* sDP = reinterpret_cast<float*>(smem_raw + L::kDP + warp * L::kScore);
  bf16* sDS = reinterpret_cast<bf16*>(smem_raw + L::kP + warp * L::kProb);
  const int64_t b = blockIdx.z, g = blockIdx.y;
  const int64_t r0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * L::kRows;

  tc_fill_rows(s, p, b, g, r0, m, z, dd);
  __syncthreads();
  tc_load_tile<D, L::kRows>(sQ, q, s.qrow, p);
  tc_load_tile<D, L::kRows>(sO, dout, s.qrow, p);
  int64_t qlo, qhi, wqlo, wqhi;
  merge_range<L::kRows>(s.qlo, s.qhi, qlo, qhi);
  warp16_range(s.qrow, s.qpos, warp * 16, wqlo, wqhi);
  const int rr = lane >> 1, h = lane & 1;
  const int row = warp * 16 + rr;
  const bool row_ok = s.qrow[row] >= 0;
  const int64_t row_pos = s.qpos[row];
  const float row_m = s.m[row], row_invz = s.invz[row], row_dd = s.dd[row];
  const bf16* sQw = sQ + warp * 16 * LD;
  const bf16* sOw = sO + warp * 16 * LD;

  FragC acc[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.0f);

  for (int64_t j0 = 0; j0 < p.Tk; j0 += N) {
    __syncthreads();  // every warp is done with the previous key tile
    tc_fill_keys(s, p, b, g, j0);
    __syncthreads();
    int64_t klo, khi;
    merge_range<N>(s.klo, s.khi, klo, khi);
    if (!tile_visible(qlo, qhi, klo, khi, p)) continue;  // uniform in the block
    tc_load_tile<D, N>(sK, k, s.krow, p);
    tc_load_tile<D, N>(sV, v, s.krow, p);
    __syncthreads();
    if (!tile_visible(wqlo, wqhi, klo, khi, p)) continue;  // uniform in the warp

    tc_scores<D, N>(sQw, sK, sS);   // S = Q K^T
    tc_scores<D, N>(sOw, sV, sDP);  // dP = dO V^T
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < N / 2; ++j) {
      const int c = tc_col<N>(j, rr, h);
      bool flagged;
      const float mk = (row_ok && s.krow[c] >= 0) ? mask_value(row_pos, s.kpos[c], s.keep[c], p, flagged) : 0.0f;
      const float e = expf(fminf(sS[rr * SLD + c] * p.scale - row_m, 0.0f));
      const float gg = (sDP[rr * SLD + c] - row_dd) * row_invz;
      sDS[rr * PLD + c] = __float2bfloat16_rn(gg * e * mk);
    }
    __syncwarp();
    tc_accumulate<D, N>(acc, sDS, sK);  // dQ += dS K
  }

  __syncwarp();
  tc_write_rows<D, SLD>(acc, sS, s.qrow, warp * 16, p.scale, dq, p.hd);
}

}  // namespace
}  // namespace agate::kernels
