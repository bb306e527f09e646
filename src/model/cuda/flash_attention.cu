// agate's blocked ("flash") gated attention on CUDA: the contract of flash_attention.h (its CPU
// twin is flash_attention_cpu.cpp, the ground truth masked_attention_reference in attention.cpp).
// Memory is linear in T: the only buffers besides the outputs are D (one float per query row);
// no [Tq, Tk] tensor exists anywhere.
//
// Arithmetic. Plain float32 FMAs on shared-memory tiles, no tensor cores: q, k, v (float32 or
// bfloat16) are widened to float32 when a tile is loaded into shared memory, every product,
// exp and sum runs in float32, and the results are rounded once to the inputs' dtype.
//
// Rows. For batch b and KV head g the G query heads h = g * G + hq are taken together as
// R = G * Tq rows r = i * G + hq (query i, head hq; the heads of one query are neighbours, so a
// tile of rows spans few positions and the causal/window tile skipping stays tight). Row r reads
// q/out/dout row (b * H + h) * Tq + i and key j reads k/v row (b * Hkv + g) * Tk + j, which is
// also its index in keep and dkeep ([B, Hkv, Tk]). So K/V are read once per KV head for all G
// query heads and are never repeated in memory.
//
// Geometry (all three main kernels). 256 threads, tiles of kTile = 32 rows and 32 keys, head
// dimension padded (with zeros) to the template bucket D in {32, 64, 96, 128, 192, 256}.
// Thread t has ty = t / 16 and tx = t % 16; a half-warp is one ty.
//   - score phase: thread (ty, tx) computes the 2 x 2 block of rows {ty, ty + 16} x keys
//     {tx, tx + 16} of a 32 x 32 tile (S = Q K^T, and dA = dO V^T in the backward), an inner
//     loop over D; row reductions (max, sum) are xor-shuffles over the 16 lanes of a half-warp;
//   - accumulation phase: thread (ty, tx) owns rows (or keys) {ty, ty + 16} x columns
//     {tx + 16 k, k < D / 16} of a [32, D] accumulator in registers.
// Shared tiles are float32 [32][D + 1] (the +1 pad makes the column walks of the score phase
// conflict-free) and [32][33] for P / dS; per-row and per-key metadata (row index, position,
// keep, m, 1/z, D) sit in small shared arrays. Dynamic shared memory per CTA (bytes):
//   D = 64: forward 30,720, dK/dV 43,264, dQ 39,040; D = 128: 55,296 / 76,032 / 71,808;
//   D = 256: 104,448 / 141,568 / 137,344 (the kSmem* functions below; under the 163 KiB
//   per-block limit of sm_80, checked at launch against the device's opt-in maximum).
// Tile skipping: a (row tile, key tile) pair is skipped when no key may be seen by any row:
//   min k_pos > max q_pos (causal), or sliding_window > 0 and min q_pos - max k_pos >=
//   sliding_window; the ranges are computed on the device from the positions of the tile (the
//   positions are arbitrary int64, not assumed sorted), so the decision is exact-conservative
//   (a skipped pair has M = 0 and no flag reads everywhere) and uniform across the CTA.
//
// Forward (flash_forward_kernel), one CTA per (row tile, KV head, batch); its 32 rows' Q stays in
//   shared memory; for each key tile: load positions/keep, skip test, load K and V, S = scale Q K^T,
//   M from the positions (allowed/always/keep exactly as the header says), then the online
//   softmax over visible keys: tile max over M > 0, m_new = max(m, tile max), alpha =
//   exp(m - m_new), p = M > 0 ? exp(s - m_new) * M : 0 (a select, so a hidden key's huge exp
//   never meets a zero), z = alpha z + sum p, O = alpha O + P V. At the end m = running max (0
//   when no key was visible), z as summed, out = O / z.
// Backward, three launches on the stream:
//   1. row_dot_kernel: D_i = dout_i . out_i (float32, one warp per row).
//   2. flash_backward_kv_kernel, one CTA per (key tile, KV head, batch): the tile's K and V stay
//      in shared memory; it walks every row tile of the G * Tq rows (skipping invisible ones),
//      recomputes s and dA, e = exp(min(s - m, 0)) (<= 1 also for hidden keys), M,
//      g = (dA - D) / z, P = e M / z, dS = g e M, and accumulates in registers
//        dV += P^T dO,   dK += dS^T Q (times scale at the end),
//        dkeep_j += g e over the rows with allowed && !always (per-thread partials, summed over
//        the 16 row groups in shared memory at the end in a fixed order).
//      Each key's dK, dV and dkeep are owned by one CTA: no atomics, written once.
//   3. flash_backward_q_kernel, one CTA per (row tile, KV head, batch): the tile's Q and dO stay
//      in shared memory; it walks the key tiles, recomputes s, dA and dS as above and accumulates
//      dQ += dS K in registers (times scale at the end), written once in q's dtype.
//   dQ thus costs a second recomputation of S and dA (7 tile products instead of the 5 of an
//   atomicAdd scheme) but needs no float32 dQ buffer and no atomics: every gradient is computed
//   in a fixed order and is bitwise reproducible from run to run.
// Rows with no visible key (z = 0: possible only if a query's own position is not among the
//   keys and nothing else is visible) give out = 0, m = 0 and zero gradients (1/z is taken as 0;
//   the reference divides 0 by 0 there).
// Everything is enqueued on the current stream of the inputs' device; nothing waits for the
// device or reads device memory from the host.
// Tests: tests/model/test_flash_cuda.cpp (against the float64 reference; needs a device).
// tools/flash_cuda_emu/run.sh runs this file's kernels and host code on the CPU under an
// emulation of the CUDA features used (threads, barriers, shuffles) against the same tests.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../flash_attention.h"

namespace agate::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;   // rows per row tile = keys per key tile
constexpr int kLanes = 16;  // threads along keys / columns (a half-warp); 16 along rows
constexpr int kPLd = kTile + 1;  // row stride of the [32][33] P / dS tiles
constexpr int kMaxHeadDim = 256;

static_assert(kThreads == kLanes * kLanes && kTile == 2 * kLanes, "the 2 x 2 thread blocking assumes these");

// Shared memory layout, the same carving for the three main kernels: 4 x 32 int64 (row index,
// row position, key index, key position), 4 x 32 float (keep, m, 1/z, D), then the float tiles.
constexpr size_t kMetaBytes = 4 * kTile * sizeof(int64_t) + 4 * kTile * sizeof(float);
template <int D>
constexpr size_t kSmemForward = kMetaBytes + (3 * kTile * (D + 1) + kTile * kPLd) * sizeof(float);
template <int D>
constexpr size_t kSmemBackwardKV = kMetaBytes + (4 * kTile * (D + 1) + 2 * kTile * kPLd) * sizeof(float);
template <int D>
constexpr size_t kSmemBackwardQ = kMetaBytes + (4 * kTile * (D + 1) + kTile * kPLd) * sizeof(float);

// Blocks per SM that ptxas must leave registers for (__launch_bounds__): 2 (at most 128
// registers a thread) keeps every kernel free of spills, except the dK/dV kernel for D > 128,
// whose two [2][D / 16] accumulators need more (it runs one block per SM there anyway, for its
// shared memory). Without the hint ptxas picks 64 registers for some and spills.
template <int D>
constexpr int kBackwardKVMinBlocks = D > 128 ? 1 : 2;

struct Params {
  int64_t B, H, Hkv, G, Tq, Tk, hd, R;  // R = G * Tq rows per (b, KV head)
  float scale;
  int64_t sw, rw;
  const int64_t* qp;  // [Tq]
  const int64_t* kp;  // [Tk]
  const float* keep;  // [B, Hkv, Tk] or nullptr (every key kept)
};

struct Smem {
  int64_t *qrow, *qpos, *krow, *kpos;  // [kTile] each; row index -1 = past the end
  float *keep, *m, *invz, *dd;         // [kTile] each
  float* tiles;                        // the float tiles, carved by each kernel
};

__device__ __forceinline__ Smem carve(unsigned char* raw) {
  Smem s;
  auto* i64 = reinterpret_cast<int64_t*>(raw);
  s.qrow = i64;
  s.qpos = i64 + kTile;
  s.krow = i64 + 2 * kTile;
  s.kpos = i64 + 3 * kTile;
  auto* f = reinterpret_cast<float*>(i64 + 4 * kTile);
  s.keep = f;
  s.m = f + kTile;
  s.invz = f + 2 * kTile;
  s.dd = f + 3 * kTile;
  s.tiles = f + 4 * kTile;
  return s;
}

__device__ __forceinline__ float half_warp_max(float x) {
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ float half_warp_sum(float x) {
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// M for query position qp against key position kp (header: allowed / always / keep); flagged =
// allowed && !always (the key is seen through its keep value; dkeep gathers there).
__device__ __forceinline__ float mask_value(int64_t qp, int64_t kp, float keepv, const Params& p, bool& flagged) {
  const int64_t d = qp - kp;
  const bool allowed = d >= 0 && (p.sw <= 0 || d < p.sw);
  const bool always = d == 0 || (p.rw > 0 && d < p.rw);
  flagged = allowed && !always;
  return !allowed ? 0.0f : (always ? 1.0f : keepv);
}

// Min and max of pos[t] over the entries with row[t] >= 0 (lo > hi when there is none).
__device__ __forceinline__ void position_range(const int64_t* row, const int64_t* pos, int64_t& lo, int64_t& hi) {
  lo = INT64_MAX;
  hi = INT64_MIN;
  for (int t = 0; t < kTile; ++t) {
    if (row[t] >= 0) {
      lo = pos[t] < lo ? pos[t] : lo;
      hi = pos[t] > hi ? pos[t] : hi;
    }
  }
}

// Whether any query in [qlo, qhi] may see (allowed) any key in [klo, khi].
__device__ __forceinline__ bool tile_visible(int64_t qlo, int64_t qhi, int64_t klo, int64_t khi, const Params& p) {
  if (qlo > qhi || klo > khi) return false;  // no valid row or key
  if (klo > qhi) return false;               // every key after every query
  if (p.sw > 0 && qlo - khi >= p.sw) return false;  // every key out of every query's window
  return true;
}

// dst[r][d] (row stride D + 1) = src[row[r] * hd + d] as float for d < hd, 0 for the padding
// columns and for rows with row[r] < 0.
template <int D, typename T>
__device__ __forceinline__ void load_tile(float* __restrict__ dst, const T* __restrict__ src,
                                          const int64_t* __restrict__ row, int64_t hd) {
  for (int idx = threadIdx.x; idx < kTile * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    const int64_t rr = row[r];
    dst[r * (D + 1) + d] = (rr >= 0 && d < hd) ? static_cast<float>(src[rr * hd + d]) : 0.0f;
  }
}

// acc[a][c] = sum_d A[ty + 16 a][d] * Bt[tx + 16 c][d] (both [32][D + 1] tiles).
template <int D>
__device__ __forceinline__ void tile_dot(const float* __restrict__ A, const float* __restrict__ Bt, int ty, int tx,
                                         float acc[2][2]) {
  constexpr int LD = D + 1;
  const float* a0 = A + ty * LD;
  const float* a1 = A + (ty + kLanes) * LD;
  const float* b0 = Bt + tx * LD;
  const float* b1 = Bt + (tx + kLanes) * LD;
  float s00 = 0.0f, s01 = 0.0f, s10 = 0.0f, s11 = 0.0f;
#pragma unroll 8
  for (int d = 0; d < D; ++d) {
    const float x0 = a0[d], x1 = a1[d], y0 = b0[d], y1 = b1[d];
    s00 = fmaf(x0, y0, s00);
    s01 = fmaf(x0, y1, s01);
    s10 = fmaf(x1, y0, s10);
    s11 = fmaf(x1, y1, s11);
  }
  acc[0][0] = s00;
  acc[0][1] = s01;
  acc[1][0] = s10;
  acc[1][1] = s11;
}

// Row metadata of row tile r0 (thread t < 32 fills entry t): row index into q/out/dout/m/z/D
// rows ([B, H, Tq] flattened), -1 past the end, and the query position.
__device__ __forceinline__ void fill_rows(const Smem& s, const Params& p, int64_t b, int64_t g, int64_t r0) {
  const int t = threadIdx.x;
  if (t < kTile) {
    const int64_t r = r0 + t;
    if (r < p.R) {
      const int64_t i = r / p.G, hq = r % p.G;
      s.qrow[t] = (b * p.H + g * p.G + hq) * p.Tq + i;
      s.qpos[t] = p.qp[i];
    } else {
      s.qrow[t] = -1;
      s.qpos[t] = 0;
    }
  }
}

// Key metadata of key tile j0: key index into k/v rows and keep/dkeep ([B, Hkv, Tk]
// flattened), -1 past the end, the key position and its keep value (1 without keep).
__device__ __forceinline__ void fill_keys(const Smem& s, const Params& p, int64_t b, int64_t g, int64_t j0) {
  const int t = threadIdx.x;
  if (t < kTile) {
    const int64_t j = j0 + t;
    if (j < p.Tk) {
      const int64_t kr = (b * p.Hkv + g) * p.Tk + j;
      s.krow[t] = kr;
      s.kpos[t] = p.kp[j];
      s.keep[t] = p.keep != nullptr ? p.keep[kr] : 1.0f;
    } else {
      s.krow[t] = -1;
      s.kpos[t] = 0;
      s.keep[t] = 0.0f;
    }
  }
}

// m, 1/z and D of the rows in s.qrow (thread t < 32 fills entry t; after fill_rows and a sync).
__device__ __forceinline__ void fill_row_stats(const Smem& s, const float* m, const float* z, const float* dd) {
  const int t = threadIdx.x;
  if (t < kTile) {
    const int64_t row = s.qrow[t];
    if (row >= 0) {
      const float zr = z[row];
      s.m[t] = m[row];
      s.invz[t] = zr > 0.0f ? 1.0f / zr : 0.0f;
      s.dd[t] = dd[row];
    } else {
      s.m[t] = 0.0f;
      s.invz[t] = 0.0f;
      s.dd[t] = 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. grid (ceil(R / 32), Hkv, B); out [B, H, Tq, hd]; m, z [B, H, Tq].
template <int D, typename T>
__global__ void __launch_bounds__(kThreads, 2)
    flash_forward_kernel(Params p, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ out, float* __restrict__ m_out, float* __restrict__ z_out) {
  constexpr int LD = D + 1, kCols = D / kLanes;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Smem s = carve(smem_raw);
  float* sQ = s.tiles;             // [32][LD]
  float* sK = sQ + kTile * LD;     // [32][LD]
  float* sV = sK + kTile * LD;     // [32][LD]
  float* sP = sV + kTile * LD;     // [32][kPLd]

  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const int64_t b = blockIdx.z, g = blockIdx.y;
  // Last row tiles first: under causal positions they see the most keys (the longest CTAs start early).
  const int64_t r0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kTile;

  fill_rows(s, p, b, g, r0);
  __syncthreads();
  load_tile<D>(sQ, q, s.qrow, p.hd);
  int64_t qlo, qhi;
  position_range(s.qrow, s.qpos, qlo, qhi);
  const bool row_ok[2] = {s.qrow[ty] >= 0, s.qrow[ty + kLanes] >= 0};
  const int64_t row_pos[2] = {s.qpos[ty], s.qpos[ty + kLanes]};

  const float neg_inf = -INFINITY;
  float o[2][kCols];
#pragma unroll
  for (int a = 0; a < 2; ++a) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[a][c] = 0.0f;
  }
  float m_run[2] = {neg_inf, neg_inf};
  float z_part[2] = {0.0f, 0.0f};  // this thread's share of the row sums (same scaling as m_run)

  for (int64_t j0 = 0; j0 < p.Tk; j0 += kTile) {
    __syncthreads();  // the previous tile's readers of sK, sV, sP and the key metadata are done
    fill_keys(s, p, b, g, j0);
    __syncthreads();
    int64_t klo, khi;
    position_range(s.krow, s.kpos, klo, khi);
    if (!tile_visible(qlo, qhi, klo, khi, p)) continue;  // uniform: every thread read the same
    load_tile<D>(sK, k, s.krow, p.hd);
    load_tile<D>(sV, v, s.krow, p.hd);
    __syncthreads();

    float sc[2][2];
    tile_dot<D>(sQ, sK, ty, tx, sc);
#pragma unroll
    for (int a = 0; a < 2; ++a) {
      float mk[2];
      float tile_max = neg_inf;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int kc = tx + c * kLanes;
        bool flagged;
        mk[c] = (row_ok[a] && s.krow[kc] >= 0) ? mask_value(row_pos[a], s.kpos[kc], s.keep[kc], p, flagged) : 0.0f;
        sc[a][c] *= p.scale;
        if (mk[c] > 0.0f) tile_max = fmaxf(tile_max, sc[a][c]);
      }
      tile_max = half_warp_max(tile_max);
      const float m_new = fmaxf(m_run[a], tile_max);
      // alpha rescales what was summed against m_run; with no visible key yet (m_new = -inf)
      // nothing was summed and nothing is added.
      const float alpha = m_new == neg_inf ? 1.0f : expf(m_run[a] - m_new);
      float psum = 0.0f;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float pv = mk[c] > 0.0f ? expf(sc[a][c] - m_new) * mk[c] : 0.0f;
        sP[(ty + a * kLanes) * kPLd + tx + c * kLanes] = pv;
        psum += pv;
      }
      z_part[a] = z_part[a] * alpha + psum;
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[a][c] *= alpha;
      m_run[a] = m_new;
    }
    __syncthreads();

    // O += P V: rows {ty, ty + 16} x columns {tx + 16 c}.
    const float* p0 = sP + ty * kPLd;
    const float* p1 = sP + (ty + kLanes) * kPLd;
#pragma unroll 4
    for (int kk = 0; kk < kTile; ++kk) {
      const float w0 = p0[kk], w1 = p1[kk];
      const float* vr = sV + kk * LD + tx;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float x = vr[c * kLanes];
        o[0][c] = fmaf(w0, x, o[0][c]);
        o[1][c] = fmaf(w1, x, o[1][c]);
      }
    }
  }

#pragma unroll
  for (int a = 0; a < 2; ++a) {
    const float z = half_warp_sum(z_part[a]);  // every lane of the warp takes part
    if (!row_ok[a]) continue;
    const int64_t row = s.qrow[ty + a * kLanes];
    const float inv = z > 0.0f ? 1.0f / z : 0.0f;
    T* orow = out + row * p.hd;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = tx + c * kLanes;
      if (d < p.hd) orow[d] = static_cast<T>(o[a][c] * inv);
    }
    if (tx == 0) {
      m_out[row] = m_run[a] == neg_inf ? 0.0f : m_run[a];
      z_out[row] = z;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// D_i = dout_i . out_i, one warp per row of [rows, hd].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_dot_kernel(const T* __restrict__ dout, const T* __restrict__ out, float* __restrict__ dd, int64_t rows,
                   int64_t hd) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
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
// dA, the stats of the row and the metadata of both. Returns dS = g e M and sets pr = e M / z
// and flag_grad = g e where the key is seen through its flag (else 0).
__device__ __forceinline__ float backward_element(const Smem& s, const Params& p, int r, int kc, float dot, float da,
                                                  float& pr, float& flag_grad) {
  bool flagged = false;
  const float mk =
      (s.qrow[r] >= 0 && s.krow[kc] >= 0) ? mask_value(s.qpos[r], s.kpos[kc], s.keep[kc], p, flagged) : 0.0f;
  const float e = expf(fminf(dot * p.scale - s.m[r], 0.0f));  // <= 1, also for hidden keys
  const float gg = (da - s.dd[r]) * s.invz[r];
  pr = e * mk * s.invz[r];
  flag_grad = flagged ? gg * e : 0.0f;
  return gg * e * mk;
}

// dK, dV, dkeep. grid (ceil(Tk / 32), Hkv, B); dk, dv [B, Hkv, Tk, hd]; dkeep [B, Hkv, Tk] or null.
template <int D, typename T>
__global__ void __launch_bounds__(kThreads, kBackwardKVMinBlocks<D>)
    flash_backward_kv_kernel(Params p, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const T* __restrict__ dout, const float* __restrict__ m, const float* __restrict__ z,
                             const float* __restrict__ dd, T* __restrict__ dk, T* __restrict__ dv,
                             float* __restrict__ dkeep) {
  constexpr int LD = D + 1, kCols = D / kLanes;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Smem s = carve(smem_raw);
  float* sK = s.tiles;             // [32][LD], resident
  float* sV = sK + kTile * LD;     // [32][LD], resident
  float* sQ = sV + kTile * LD;     // [32][LD], per row tile
  float* sO = sQ + kTile * LD;     // [32][LD], dout of the row tile
  float* sP = sO + kTile * LD;     // [32][kPLd], P = e M / z
  float* sS = sP + kTile * kPLd;   // [32][kPLd], dS

  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const int64_t b = blockIdx.z, g = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;

  fill_keys(s, p, b, g, j0);
  __syncthreads();
  load_tile<D>(sK, k, s.krow, p.hd);
  load_tile<D>(sV, v, s.krow, p.hd);
  int64_t klo, khi;
  position_range(s.krow, s.kpos, klo, khi);

  float acc_k[2][kCols], acc_v[2][kCols];  // keys {ty, ty + 16} x columns {tx + 16 c}
#pragma unroll
  for (int a = 0; a < 2; ++a) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc_k[a][c] = acc_v[a][c] = 0.0f;
  }
  float keep_part[2] = {0.0f, 0.0f};  // keys {tx, tx + 16}, summed over this thread's rows

  for (int64_t r0 = 0; r0 < p.R; r0 += kTile) {
    __syncthreads();  // the previous row tile's readers are done
    fill_rows(s, p, b, g, r0);
    __syncthreads();
    fill_row_stats(s, m, z, dd);
    int64_t qlo, qhi;
    position_range(s.qrow, s.qpos, qlo, qhi);
    if (!tile_visible(qlo, qhi, klo, khi, p)) continue;  // uniform
    load_tile<D>(sQ, q, s.qrow, p.hd);
    load_tile<D>(sO, dout, s.qrow, p.hd);
    __syncthreads();

    float dot[2][2], da[2][2];
    tile_dot<D>(sQ, sK, ty, tx, dot);
    tile_dot<D>(sO, sV, ty, tx, da);
#pragma unroll
    for (int a = 0; a < 2; ++a) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int r = ty + a * kLanes, kc = tx + c * kLanes;
        float pr, fg;
        sS[r * kPLd + kc] = backward_element(s, p, r, kc, dot[a][c], da[a][c], pr, fg);
        sP[r * kPLd + kc] = pr;
        keep_part[c] += fg;
      }
    }
    __syncthreads();

    // dV += P^T dO, dK += dS^T Q: keys {ty, ty + 16} x columns {tx + 16 c}.
#pragma unroll 2
    for (int rr = 0; rr < kTile; ++rr) {
      const float p0 = sP[rr * kPLd + ty], p1 = sP[rr * kPLd + ty + kLanes];
      const float d0 = sS[rr * kPLd + ty], d1 = sS[rr * kPLd + ty + kLanes];
      const float* orow = sO + rr * LD + tx;
      const float* qrow = sQ + rr * LD + tx;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float x = orow[c * kLanes], y = qrow[c * kLanes];
        acc_v[0][c] = fmaf(p0, x, acc_v[0][c]);
        acc_v[1][c] = fmaf(p1, x, acc_v[1][c]);
        acc_k[0][c] = fmaf(d0, y, acc_k[0][c]);
        acc_k[1][c] = fmaf(d1, y, acc_k[1][c]);
      }
    }
  }

#pragma unroll
  for (int a = 0; a < 2; ++a) {
    const int64_t kr = s.krow[ty + a * kLanes];
    if (kr < 0) continue;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = tx + c * kLanes;
      if (d < p.hd) {
        dk[kr * p.hd + d] = static_cast<T>(acc_k[a][c] * p.scale);
        dv[kr * p.hd + d] = static_cast<T>(acc_v[a][c]);
      }
    }
  }
  if (dkeep != nullptr) {
    // Sum the 16 row groups' partials of each key in a fixed order (sP is free now).
    __syncthreads();
    sP[ty * kPLd + tx] = keep_part[0];
    sP[ty * kPLd + tx + kLanes] = keep_part[1];
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int kc = threadIdx.x;
      float sum = 0.0f;
      for (int t = 0; t < kLanes; ++t) sum += sP[t * kPLd + kc];
      if (s.krow[kc] >= 0) dkeep[s.krow[kc]] = sum;
    }
  }
}

// dQ. grid (ceil(R / 32), Hkv, B); dq [B, H, Tq, hd].
template <int D, typename T>
__global__ void __launch_bounds__(kThreads, 2)
    flash_backward_q_kernel(Params p, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const float* __restrict__ m, const float* __restrict__ z,
                            const float* __restrict__ dd, T* __restrict__ dq) {
  constexpr int LD = D + 1, kCols = D / kLanes;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Smem s = carve(smem_raw);
  float* sQ = s.tiles;             // [32][LD], resident
  float* sO = sQ + kTile * LD;     // [32][LD], dout, resident
  float* sK = sO + kTile * LD;     // [32][LD], per key tile
  float* sV = sK + kTile * LD;     // [32][LD], per key tile
  float* sS = sV + kTile * LD;     // [32][kPLd], dS

  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const int64_t b = blockIdx.z, g = blockIdx.y;
  const int64_t r0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kTile;

  fill_rows(s, p, b, g, r0);
  __syncthreads();
  fill_row_stats(s, m, z, dd);
  load_tile<D>(sQ, q, s.qrow, p.hd);
  load_tile<D>(sO, dout, s.qrow, p.hd);
  int64_t qlo, qhi;
  position_range(s.qrow, s.qpos, qlo, qhi);

  float acc[2][kCols];  // rows {ty, ty + 16} x columns {tx + 16 c}
#pragma unroll
  for (int a = 0; a < 2; ++a) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[a][c] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < p.Tk; j0 += kTile) {
    __syncthreads();  // the previous key tile's readers (and the row stats' writers) are done
    fill_keys(s, p, b, g, j0);
    __syncthreads();
    int64_t klo, khi;
    position_range(s.krow, s.kpos, klo, khi);
    if (!tile_visible(qlo, qhi, klo, khi, p)) continue;  // uniform
    load_tile<D>(sK, k, s.krow, p.hd);
    load_tile<D>(sV, v, s.krow, p.hd);
    __syncthreads();

    float dot[2][2], da[2][2];
    tile_dot<D>(sQ, sK, ty, tx, dot);
    tile_dot<D>(sO, sV, ty, tx, da);
#pragma unroll
    for (int a = 0; a < 2; ++a) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int r = ty + a * kLanes, kc = tx + c * kLanes;
        float pr, fg;
        sS[r * kPLd + kc] = backward_element(s, p, r, kc, dot[a][c], da[a][c], pr, fg);
      }
    }
    __syncthreads();

    // dQ += dS K: rows {ty, ty + 16} x columns {tx + 16 c}.
    const float* s0 = sS + ty * kPLd;
    const float* s1 = sS + (ty + kLanes) * kPLd;
#pragma unroll 4
    for (int kk = 0; kk < kTile; ++kk) {
      const float w0 = s0[kk], w1 = s1[kk];
      const float* kr = sK + kk * LD + tx;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float x = kr[c * kLanes];
        acc[0][c] = fmaf(w0, x, acc[0][c]);
        acc[1][c] = fmaf(w1, x, acc[1][c]);
      }
    }
  }

#pragma unroll
  for (int a = 0; a < 2; ++a) {
    const int64_t row = s.qrow[ty + a * kLanes];
    if (row < 0) continue;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = tx + c * kLanes;
      if (d < p.hd) dq[row * p.hd + d] = static_cast<T>(acc[a][c] * p.scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct Inputs {
  at::Tensor q, k, v, qp, kp, keep;
  Params p;
};

Inputs prepare(const FlashArgs& a) {
  TORCH_CHECK(a.q.defined() && a.k.defined() && a.v.defined(), "flash attention (CUDA): q, k, v must be defined");
  TORCH_CHECK(a.q.is_cuda() && a.k.device() == a.q.device() && a.v.device() == a.q.device(),
              "flash attention (CUDA): q, k, v must be on one CUDA device, got ", a.q.device(), ", ", a.k.device(),
              ", ", a.v.device());
  TORCH_CHECK(a.q.dim() == 4 && a.k.dim() == 4 && a.v.dim() == 4,
              "flash attention (CUDA): q [B, H, Tq, hd], k and v [B, Hkv, Tk, hd] expected, got ", a.q.sizes(), ", ",
              a.k.sizes(), ", ", a.v.sizes());
  const auto st = a.q.scalar_type();
  TORCH_CHECK((st == at::kFloat || st == at::kBFloat16) && a.k.scalar_type() == st && a.v.scalar_type() == st,
              "flash attention (CUDA): q, k, v must share one dtype, float32 or bfloat16; got ", a.q.scalar_type(),
              ", ", a.k.scalar_type(), ", ", a.v.scalar_type());
  Inputs in;
  Params& p = in.p;
  p.B = a.q.size(0), p.H = a.q.size(1), p.Tq = a.q.size(2), p.hd = a.q.size(3);
  p.Hkv = a.k.size(1), p.Tk = a.k.size(2);
  TORCH_CHECK(a.k.size(0) == p.B && a.k.size(3) == p.hd && a.v.sizes() == a.k.sizes(),
              "flash attention (CUDA): k and v must be [B, Hkv, Tk, hd] matching q ", a.q.sizes(), ", got ",
              a.k.sizes(), " and ", a.v.sizes());
  TORCH_CHECK(p.Hkv > 0 && p.H % p.Hkv == 0, "flash attention (CUDA): query heads (", p.H,
              ") must be a multiple of KV heads (", p.Hkv, ")");
  TORCH_CHECK(p.hd >= 1 && p.hd <= kMaxHeadDim, "flash attention (CUDA): head dim ", p.hd,
              " is not supported (1 to ", kMaxHeadDim, ")");
  TORCH_CHECK(p.B <= 65535 && p.Hkv <= 65535, "flash attention (CUDA): B and Hkv must be at most 65535");
  TORCH_CHECK(a.q_pos.defined() && a.k_pos.defined() && a.q_pos.dim() == 1 && a.k_pos.dim() == 1 &&
                  a.q_pos.numel() == p.Tq && a.k_pos.numel() == p.Tk,
              "flash attention (CUDA): q_pos must be [Tq] and k_pos [Tk]");
  TORCH_CHECK(!c10::isFloatingType(a.q_pos.scalar_type()) && !c10::isFloatingType(a.k_pos.scalar_type()),
              "flash attention (CUDA): positions must be integers");
  p.G = p.H / p.Hkv;
  p.R = p.G * p.Tq;
  TORCH_CHECK((p.R + kTile - 1) / kTile <= INT32_MAX && (p.Tk + kTile - 1) / kTile <= INT32_MAX,
              "flash attention (CUDA): too many rows for one grid");
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.hd)));
  p.sw = a.sliding_window;
  p.rw = a.recent_window;
  in.q = a.q.contiguous();
  in.k = a.k.contiguous();
  in.v = a.v.contiguous();
  // Positions on the device as int64 (a no-op when they already are).
  in.qp = a.q_pos.to(a.q.device(), at::kLong).contiguous();
  in.kp = a.k_pos.to(a.q.device(), at::kLong).contiguous();
  p.qp = in.qp.data_ptr<int64_t>();
  p.kp = in.kp.data_ptr<int64_t>();
  p.keep = nullptr;
  if (a.keep.defined()) {
    TORCH_CHECK(a.keep.device() == a.q.device() && a.keep.scalar_type() == at::kFloat && a.keep.dim() == 3 &&
                    a.keep.size(0) == p.B && a.keep.size(1) == p.Hkv && a.keep.size(2) == p.Tk,
                "flash attention (CUDA): keep must be [B, Hkv, Tk] = [", p.B, ", ", p.Hkv, ", ", p.Tk,
                "] float32 on ", a.q.device(), ", got ", a.keep.sizes(), " ", a.keep.scalar_type(), " on ",
                a.keep.device());
    in.keep = a.keep.contiguous();
    p.keep = in.keep.data_ptr<float>();
  }
  return in;
}

// Calls f(std::integral_constant<int, D>) for the smallest bucket D >= hd.
template <typename F>
void with_head_dim(int64_t hd, F&& f) {
  if (hd <= 32) f(std::integral_constant<int, 32>{});
  else if (hd <= 64) f(std::integral_constant<int, 64>{});
  else if (hd <= 96) f(std::integral_constant<int, 96>{});
  else if (hd <= 128) f(std::integral_constant<int, 128>{});
  else if (hd <= 192) f(std::integral_constant<int, 192>{});
  else if (hd <= 256) f(std::integral_constant<int, 256>{});
  else TORCH_CHECK(false, "flash attention (CUDA): head dim ", hd, " is not supported (at most ", kMaxHeadDim, ")");
}

// Calls f(T{}) with T = float or c10::BFloat16.
template <typename F>
void with_dtype(at::ScalarType st, F&& f) {
  if (st == at::kFloat) f(float{});
  else if (st == at::kBFloat16) f(c10::BFloat16{});
  else TORCH_CHECK(false, "flash attention (CUDA): dtype ", st, " is not supported (float32 or bfloat16)");
}

// Opts the kernel into `bytes` of dynamic shared memory (beyond the default 48 KiB), after
// checking the device has them.
template <typename Kernel>
void set_shared_memory(Kernel kernel, size_t bytes, int64_t hd) {
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(bytes <= limit, "flash attention (CUDA): head dim ", hd, " needs ", bytes,
              " bytes of shared memory per block, the device allows ", limit);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

int grid_dim(int64_t n) { return static_cast<int>((n + kTile - 1) / kTile); }

}  // namespace

FlashForward flash_forward_cuda(const FlashArgs& a) {
  const c10::cuda::CUDAGuard guard(a.q.device());
  Inputs in = prepare(a);
  const Params& p = in.p;
  FlashForward f;
  f.out = at::empty({p.B, p.H, p.Tq, p.hd}, in.q.options());
  f.m = at::empty({p.B, p.H, p.Tq}, in.q.options().dtype(at::kFloat));
  f.z = at::empty({p.B, p.H, p.Tq}, in.q.options().dtype(at::kFloat));
  if (p.B == 0 || p.R == 0) return f;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(grid_dim(p.R), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
  with_head_dim(p.hd, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    with_dtype(in.q.scalar_type(), [&](auto tc) {
      using T = decltype(tc);
      auto kernel = flash_forward_kernel<D, T>;
      set_shared_memory(kernel, kSmemForward<D>, p.hd);
      kernel<<<grid, kThreads, kSmemForward<D>, stream>>>(p, ptr<T>(in.q), ptr<T>(in.k), ptr<T>(in.v),
                                                          mut_ptr<T>(f.out), mut_ptr<float>(f.m), mut_ptr<float>(f.z));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return f;
}

FlashGrads flash_backward_cuda(const FlashArgs& a, const FlashForward& f, const at::Tensor& dout_in) {
  const c10::cuda::CUDAGuard guard(a.q.device());
  Inputs in = prepare(a);
  const Params& p = in.p;
  const auto st = in.q.scalar_type();
  TORCH_CHECK(f.out.defined() && f.m.defined() && f.z.defined() && dout_in.defined(),
              "flash attention backward (CUDA): out, m, z and dout must be defined");
  TORCH_CHECK(f.out.sizes() == in.q.sizes() && dout_in.sizes() == in.q.sizes(),
              "flash attention backward (CUDA): out and dout must be ", in.q.sizes(), ", got ", f.out.sizes(), " and ",
              dout_in.sizes());
  TORCH_CHECK(f.m.numel() == p.B * p.H * p.Tq && f.z.numel() == p.B * p.H * p.Tq,
              "flash attention backward (CUDA): m and z must be [B, H, Tq]");
  TORCH_CHECK(f.out.device() == a.q.device() && f.m.device() == a.q.device() && f.z.device() == a.q.device() &&
                  dout_in.device() == a.q.device(),
              "flash attention backward (CUDA): out, m, z and dout must be on ", a.q.device());
  const at::Tensor out = f.out.to(st).contiguous();
  const at::Tensor dout = dout_in.to(st).contiguous();
  const at::Tensor m = f.m.to(at::kFloat).contiguous();
  const at::Tensor z = f.z.to(at::kFloat).contiguous();

  FlashGrads gr;
  gr.dq = at::empty(in.q.sizes(), in.q.options());
  gr.dk = at::empty(in.k.sizes(), in.k.options());
  gr.dv = at::empty(in.v.sizes(), in.v.options());
  if (in.keep.defined()) gr.dkeep = at::empty({p.B, p.Hkv, p.Tk}, in.q.options().dtype(at::kFloat));
  if (p.B == 0) return gr;

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows = p.B * p.H * p.Tq;
  at::Tensor dd = at::empty({rows}, in.q.options().dtype(at::kFloat));
  with_dtype(st, [&](auto tc) {
    using T = decltype(tc);
    if (rows > 0) {
      const int64_t warps = kThreads / 32;
      const int64_t blocks = (rows + warps - 1) / warps;
      TORCH_CHECK(blocks <= INT32_MAX, "flash attention backward (CUDA): too many rows");
      row_dot_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(ptr<T>(dout), ptr<T>(out),
                                                                               mut_ptr<float>(dd), rows, p.hd);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    with_head_dim(p.hd, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      if (p.Tk > 0) {
        const dim3 grid(grid_dim(p.Tk), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
        auto kernel = flash_backward_kv_kernel<D, T>;
        set_shared_memory(kernel, kSmemBackwardKV<D>, p.hd);
        kernel<<<grid, kThreads, kSmemBackwardKV<D>, stream>>>(
            p, ptr<T>(in.q), ptr<T>(in.k), ptr<T>(in.v), ptr<T>(dout), ptr<float>(m), ptr<float>(z), ptr<float>(dd),
            mut_ptr<T>(gr.dk), mut_ptr<T>(gr.dv), gr.dkeep.defined() ? mut_ptr<float>(gr.dkeep) : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (p.R > 0) {
        const dim3 grid(grid_dim(p.R), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
        auto kernel = flash_backward_q_kernel<D, T>;
        set_shared_memory(kernel, kSmemBackwardQ<D>, p.hd);
        kernel<<<grid, kThreads, kSmemBackwardQ<D>, stream>>>(p, ptr<T>(in.q), ptr<T>(in.k), ptr<T>(in.v),
                                                              ptr<T>(dout), ptr<float>(m), ptr<float>(z),
                                                              ptr<float>(dd), mut_ptr<T>(gr.dq));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return gr;
}

}  // namespace agate::kernels
