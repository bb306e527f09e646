// The FMA kernels of agate's CUDA flash attention (flash_attention.cu dispatches): float32 inputs
// at every head dim, bfloat16 inputs at head dims above the tensor-core kernels' (flash_tc.cuh).
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
#pragma once

#include "flash_common.cuh"

namespace agate::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;   // rows per row tile = keys per key tile
constexpr int kLanes = 16;  // threads along keys / columns (a half-warp); 16 along rows
constexpr int kPLd = kTile + 1;  // row stride of the [32][33] P / dS tiles

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

}  // namespace
}  // namespace agate::kernels
