// Blocked gated attention on the CPU: the contract of flash_attention.h, memory linear in T.
//
// Why hand-written: no library computes attention under a per-key, per-KV-head multiplicative
// mask with a gradient for that mask (SDPA and FlexAttention take masks without gradients, and
// FlexAttention's CPU kernel has no backward); the GEMMs inside are LibTorch's
// (at::native::cpublas::brgemm: oneDNN's batch-reduce micro-kernels, no tensor allocation per
// call) and the row work uses ATen's at::vec vectors.
//
// Work layout. Inputs are copied once to float32 in the layouts the GEMMs read (all linear in T):
//   qs [B, H, Tq, hd] = q * scale;  kf, vf [B, Hkv, Tk, hd];  kt, vt [B, Hkv, hd, Tk] (transposed).
// A block is the G query heads of one KV head for kBq consecutive queries, as rows
// r = gm * bq + i of a [R = G * bq, hd] panel, so every key tile (kBk keys) is read once for all
// G heads and K/V are never repeated. Key tiles that no query of the block may see (causal or
// window bounds from the positions) are skipped.
// Forward, parallel over (b, KV head, query block): S = Qs K^T for one tile (brgemm), the
//   visibility row M built once per query and shared by its G heads, the online softmax over
//   visible keys (running max m, sum z, rescaled accumulator), O += P V (brgemm).
// Backward, parallel over (b, KV head, key chunk): every task owns its keys' dK, dV and d(keep)
//   rows, so they need no atomics; it walks the query blocks, recomputes S and P from the saved
//   m and z, dA = dO V^T, and accumulates dV += P^T dO, dK += dS^T Qs and its own partial
//   dQ += dS K; the partials (one per key chunk, chunks only as many as the threads need) are
//   summed at the end. dS^T and P^T are packed per tile (brgemm takes row-major operands).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "flash_attention.h"

namespace agate::kernels {

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kBq = 64;   // queries per block (per query head)
constexpr int64_t kBk = 128;  // keys per tile (a multiple of Vec::size())
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Problem {
  int64_t B, H, Hkv, G, Tq, Tk, hd;
  float scale;
  const int64_t* qp;
  const int64_t* kp;
  const float* keep;  // [B, Hkv, Tk] or nullptr
  int64_t sw, rw, du;  // sliding window, recent window, dense_until
  bool kcontig;        // kp is consecutive: mask_row's fast path
};

Problem problem_of(const FlashArgs& a) {
  TORCH_CHECK(a.q.dim() == 4 && a.k.dim() == 4 && a.v.dim() == 4, "flash attention: q, k, v must be 4-D");
  Problem p{};
  p.B = a.q.size(0), p.H = a.q.size(1), p.Tq = a.q.size(2), p.hd = a.q.size(3);
  p.Hkv = a.k.size(1), p.Tk = a.k.size(2);
  TORCH_CHECK(p.Hkv > 0 && p.H % p.Hkv == 0, "flash attention: query heads must be a multiple of KV heads");
  TORCH_CHECK(a.q_pos.numel() == p.Tq && a.k_pos.numel() == p.Tk, "flash attention: positions do not match");
  p.G = p.H / p.Hkv;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.hd)));
  p.sw = a.sliding_window, p.rw = a.recent_window, p.du = a.dense_until;
  return p;
}

// The visibility row of query position qpos against keys kp[0..n): m = M (0 where hidden),
// f = 1 where the key is seen through its flag (allowed and not always visible), else 0.
// Entries n..padded are zero so vector loops may run over whole vectors.
void mask_row(const Problem& p, int64_t qpos, const int64_t* kp, const float* keep, int64_t n, int64_t padded,
              float* m, float* f) {
  if (p.kcontig) {
    // Consecutive key positions (kp[j] = kp[0] + j, as in training and prefill): the row is
    // four ranges, hidden [0, a_lo), flagged [a_lo, w_lo), always [w_lo, a_hi), hidden after.
    const int64_t self = qpos - kp[0];  // the key at distance 0
    const int64_t a_hi = std::clamp<int64_t>(self + 1, 0, n);
    const int64_t a_lo = p.sw > 0 ? std::clamp<int64_t>(self - p.sw + 1, 0, n) : 0;
    const int64_t w_lo = qpos < p.du ? a_lo : std::clamp<int64_t>(p.rw > 0 ? self - p.rw + 1 : self, a_lo, a_hi);
    std::fill(m, m + a_lo, 0.0f);
    std::fill(f, f + padded, 0.0f);
    if (keep != nullptr) {
      std::copy(keep + a_lo, keep + w_lo, m + a_lo);
      std::fill(f + a_lo, f + w_lo, 1.0f);
    } else {
      std::fill(m + a_lo, m + w_lo, 1.0f);
    }
    std::fill(m + w_lo, m + a_hi, 1.0f);
    std::fill(m + a_hi, m + padded, 0.0f);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t d = qpos - kp[j];
    const bool allowed = d >= 0 && (p.sw <= 0 || d < p.sw);
    const bool always = d == 0 || (p.rw > 0 && d < p.rw) || qpos < p.du;
    const bool flagged = allowed && !always;
    m[j] = !allowed ? 0.0f : (flagged && keep != nullptr ? keep[j] : 1.0f);
    f[j] = flagged && keep != nullptr ? 1.0f : 0.0f;
  }
  std::fill(m + n, m + padded, 0.0f);
  std::fill(f + n, f + padded, 0.0f);
}

// Whether the positions are consecutive (x[j] = x[0] + j).
bool consecutive(const int64_t* x, int64_t n) {
  for (int64_t j = 1; j < n; ++j)
    if (x[j] != x[0] + j) return false;
  return true;
}

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Whether any query with a position in [qmin, qmax] may see a key in [kmin, kmax].
bool tile_visible(const Problem& p, int64_t qmin, int64_t qmax, int64_t kmin, int64_t kmax) {
  if (kmin > qmax) return false;
  if (p.sw > 0 && qmin - kmax >= p.sw) return false;
  return true;
}

std::pair<int64_t, int64_t> range_of(const int64_t* x, int64_t n) {
  const auto [lo, hi] = std::minmax_element(x, x + n);
  return {*lo, *hi};
}

// dst[j * R + r] = src[r * lds + j] for r < R, j < n: in 8 x 8 blocks (registers on AVX2), so
// both sides touch whole cache lines (an element-wise loop spent most of the backward here).
void transpose_into(const float* src, int64_t lds, int64_t R, int64_t n, float* dst) {
  constexpr int64_t b = 8;
  for (int64_t r0 = 0; r0 < R; r0 += b) {
    for (int64_t j0 = 0; j0 < n; j0 += b) {
      const int64_t r1 = std::min(R, r0 + b), j1 = std::min(n, j0 + b);
#if defined(__AVX2__)
      if (r1 - r0 == b && j1 - j0 == b) {
        __m256 x[8], y[8];
        for (int k = 0; k < 8; ++k) x[k] = _mm256_loadu_ps(src + (r0 + k) * lds + j0);
        for (int k = 0; k < 8; k += 2) {
          y[k] = _mm256_unpacklo_ps(x[k], x[k + 1]);
          y[k + 1] = _mm256_unpackhi_ps(x[k], x[k + 1]);
        }
        for (int k = 0; k < 8; k += 4) {
          x[k] = _mm256_shuffle_ps(y[k], y[k + 2], 0x44);
          x[k + 1] = _mm256_shuffle_ps(y[k], y[k + 2], 0xEE);
          x[k + 2] = _mm256_shuffle_ps(y[k + 1], y[k + 3], 0x44);
          x[k + 3] = _mm256_shuffle_ps(y[k + 1], y[k + 3], 0xEE);
        }
        for (int k = 0; k < 4; ++k) {
          _mm256_storeu_ps(dst + (j0 + k) * R + r0, _mm256_permute2f128_ps(x[k], x[k + 4], 0x20));
          _mm256_storeu_ps(dst + (j0 + k + 4) * R + r0, _mm256_permute2f128_ps(x[k], x[k + 4], 0x31));
        }
        continue;
      }
#endif
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t r = r0; r < r1; ++r) dst[j * R + r] = src[r * lds + j];
    }
  }
}

float hmax(Vec v) {
  alignas(64) float t[Vec::size()];
  v.store(t);
  return *std::max_element(t, t + Vec::size());
}

float hsum(Vec v) {
  alignas(64) float t[Vec::size()];
  v.store(t);
  float s = 0;
  for (float x : t) s += x;
  return s;
}

// Per-thread buffers of the forward.
struct ForwardScratch {
  std::vector<float> q, s, acc, m, z, mrow, frow;
  explicit ForwardScratch(const Problem& p)
      : q(p.G * kBq * p.hd), s(p.G * kBq * kBk, 0.0f), acc(p.G * kBq * p.hd), m(p.G * kBq), z(p.G * kBq),
        mrow(kBq * kBk), frow(kBq * kBk) {}
};

// One forward block: KV head g of batch b, queries q0 .. q0 + bq.
void forward_block(const Problem& p, const float* qs, const float* kt, const float* vf, int64_t b, int64_t g,
                   int64_t q0, int64_t bq, ForwardScratch& w, float* out, float* m_out, float* z_out) {
  const int64_t hd = p.hd, R = p.G * bq;
  for (int64_t gm = 0; gm < p.G; ++gm) {
    const float* src = qs + ((b * p.H + g * p.G + gm) * p.Tq + q0) * hd;
    std::copy(src, src + bq * hd, w.q.data() + gm * bq * hd);
  }
  std::fill(w.acc.begin(), w.acc.begin() + R * hd, 0.0f);
  std::fill(w.m.begin(), w.m.begin() + R, kNegInf);
  std::fill(w.z.begin(), w.z.begin() + R, 0.0f);
  const auto [qmin, qmax] = range_of(p.qp + q0, bq);
  const float* keep = p.keep != nullptr ? p.keep + (b * p.Hkv + g) * p.Tk : nullptr;
  const float* kt_bg = kt + (b * p.Hkv + g) * hd * p.Tk;
  const float* v_bg = vf + (b * p.Hkv + g) * p.Tk * hd;
  for (int64_t j0 = 0; j0 < p.Tk; j0 += kBk) {
    const int64_t n = std::min(kBk, p.Tk - j0), npad = round_up(n, Vec::size());
    const auto [kmin, kmax] = range_of(p.kp + j0, n);
    if (!tile_visible(p, qmin, qmax, kmin, kmax)) continue;
    at::native::cpublas::brgemm(R, n, hd, hd, p.Tk, kBk, false, w.q.data(), kt_bg + j0, w.s.data(), false);
    for (int64_t i = 0; i < bq; ++i) {
      mask_row(p, p.qp[q0 + i], p.kp + j0, keep ? keep + j0 : nullptr, n, npad, w.mrow.data() + i * kBk,
               w.frow.data() + i * kBk);
    }
    for (int64_t r = 0; r < R; ++r) {
      float* s = w.s.data() + r * kBk;
      const float* mr = w.mrow.data() + (r % bq) * kBk;
      Vec vmax(kNegInf);
      for (int64_t j = 0; j < npad; j += Vec::size()) {
        const Vec mv = Vec::loadu(mr + j);
        vmax = at::vec::maximum(vmax, Vec::blendv(Vec(kNegInf), Vec::loadu(s + j), mv > Vec(0.0f)));
      }
      const float m_new = std::max(w.m[r], hmax(vmax));
      if (m_new == kNegInf) {  // nothing visible yet: this tile adds nothing
        std::fill(s, s + npad, 0.0f);
        continue;
      }
      const float alpha = std::exp(w.m[r] - m_new);  // 0 when the row had nothing before
      const Vec vm(m_new);
      Vec vsum(0.0f);
      for (int64_t j = 0; j < npad; j += Vec::size()) {
        const Vec e = at::vec::minimum(Vec::loadu(s + j) - vm, Vec(0.0f)).exp_u20() * Vec::loadu(mr + j);
        e.store(s + j);
        vsum += e;
      }
      w.z[r] = w.z[r] * alpha + hsum(vsum);
      w.m[r] = m_new;
      if (alpha != 1.0f) {
        float* acc = w.acc.data() + r * hd;
        for (int64_t d = 0; d < hd; ++d) acc[d] *= alpha;
      }
    }
    at::native::cpublas::brgemm(R, hd, n, kBk, hd, hd, true, w.s.data(), v_bg + j0 * hd, w.acc.data(), false);
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t gm = r / bq, i = r % bq;
    const int64_t row = (b * p.H + g * p.G + gm) * p.Tq + q0 + i;
    const float inv = 1.0f / w.z[r];
    const float* acc = w.acc.data() + r * hd;
    float* o = out + row * hd;
    for (int64_t d = 0; d < hd; ++d) o[d] = acc[d] * inv;
    m_out[row] = w.m[r] == kNegInf ? 0.0f : w.m[r];
    z_out[row] = w.z[r];
  }
}

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace

FlashForward flash_forward_cpu(const FlashArgs& a) {
  Problem p = problem_of(a);
  const at::Tensor qs = f32(a.q * p.scale), kt = f32(a.k.transpose(2, 3)), vf = f32(a.v);
  const at::Tensor qp = a.q_pos.to(at::kLong).contiguous(), kp = a.k_pos.to(at::kLong).contiguous();
  const at::Tensor keep = a.keep.defined() ? f32(a.keep) : at::Tensor();
  p.qp = qp.data_ptr<int64_t>(), p.kp = kp.data_ptr<int64_t>();
  p.kcontig = consecutive(p.kp, p.Tk);
  p.keep = keep.defined() ? keep.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({p.B, p.H, p.Tq, p.hd}, qs.options());
  at::Tensor m = at::empty({p.B, p.H, p.Tq}, qs.options()), z = at::empty({p.B, p.H, p.Tq}, qs.options());
  const int64_t nqb = (p.Tq + kBq - 1) / kBq;
  at::parallel_for(0, p.B * p.Hkv * nqb, 1, [&](int64_t begin, int64_t end) {
    ForwardScratch w(p);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bg = t / nqb, q0 = (t % nqb) * kBq;
      forward_block(p, qs.data_ptr<float>(), kt.data_ptr<float>(), vf.data_ptr<float>(), bg / p.Hkv, bg % p.Hkv, q0,
                    std::min(kBq, p.Tq - q0), w, out.data_ptr<float>(), m.data_ptr<float>(), z.data_ptr<float>());
    }
    at::native::cpublas::brgemm_release();
  });
  return {out.to(a.q.scalar_type()), m, z};
}

namespace {

// Per-thread buffers of the backward.
struct BackwardScratch {
  std::vector<float> q, dout, dq, dd, m, invz, s, da, pt, dst, mrow, frow, dkeep;
  explicit BackwardScratch(const Problem& p)
      : q(p.G * kBq * p.hd), dout(p.G * kBq * p.hd), dq(p.G * kBq * p.hd), dd(p.G * kBq), m(p.G * kBq),
        invz(p.G * kBq), s(p.G * kBq * kBk, 0.0f), da(p.G * kBq * kBk, 0.0f), pt(kBk * p.G * kBq),
        dst(kBk * p.G * kBq), mrow(kBq * kBk), frow(kBq * kBk), dkeep(kBk) {}
};

struct BackwardInputs {
  const float *qs, *kf, *kt, *vt, *dout, *dd, *m, *z;
  float *dq_part, *dk, *dv, *dkeep;  // dq_part: this chunk's [B, H, Tq, hd]
};

// One (b, KV head g) pair's keys [k0, k1) against every query block.
void backward_chunk(const Problem& p, const BackwardInputs& in, int64_t b, int64_t g, int64_t k0, int64_t k1,
                    BackwardScratch& w) {
  const int64_t hd = p.hd, bgk = (b * p.Hkv + g) * p.Tk;
  const float* keep = p.keep != nullptr ? p.keep + bgk : nullptr;
  const auto [ckmin, ckmax] = range_of(p.kp + k0, k1 - k0);
  for (int64_t q0 = 0; q0 < p.Tq; q0 += kBq) {
    const int64_t bq = std::min(kBq, p.Tq - q0), R = p.G * bq;
    const auto [qmin, qmax] = range_of(p.qp + q0, bq);
    if (!tile_visible(p, qmin, qmax, ckmin, ckmax)) continue;
    for (int64_t gm = 0; gm < p.G; ++gm) {
      const int64_t row0 = (b * p.H + g * p.G + gm) * p.Tq + q0;
      std::copy(in.qs + row0 * hd, in.qs + (row0 + bq) * hd, w.q.data() + gm * bq * hd);
      std::copy(in.dout + row0 * hd, in.dout + (row0 + bq) * hd, w.dout.data() + gm * bq * hd);
      for (int64_t i = 0; i < bq; ++i) {
        w.dd[gm * bq + i] = in.dd[row0 + i];
        w.m[gm * bq + i] = in.m[row0 + i];
        w.invz[gm * bq + i] = 1.0f / in.z[row0 + i];
      }
    }
    std::fill(w.dq.begin(), w.dq.begin() + R * hd, 0.0f);
    bool touched = false;
    for (int64_t j0 = k0; j0 < k1; j0 += kBk) {
      const int64_t n = std::min(kBk, k1 - j0), npad = round_up(n, Vec::size());
      const auto [kmin, kmax] = range_of(p.kp + j0, n);
      if (!tile_visible(p, qmin, qmax, kmin, kmax)) continue;
      touched = true;
      at::native::cpublas::brgemm(R, n, hd, hd, p.Tk, kBk, false, w.q.data(), in.kt + bgk * hd + j0,
                                  w.s.data(), false);
      at::native::cpublas::brgemm(R, n, hd, hd, p.Tk, kBk, false, w.dout.data(), in.vt + bgk * hd + j0,
                                  w.da.data(), false);
      for (int64_t i = 0; i < bq; ++i) {
        mask_row(p, p.qp[q0 + i], p.kp + j0, keep ? keep + j0 : nullptr, n, npad, w.mrow.data() + i * kBk,
                 w.frow.data() + i * kBk);
      }
      std::fill(w.dkeep.begin(), w.dkeep.end(), 0.0f);
      for (int64_t r = 0; r < R; ++r) {
        float* s = w.s.data() + r * kBk;  // -> P
        float* da = w.da.data() + r * kBk;  // -> dS
        const float* mr = w.mrow.data() + (r % bq) * kBk;
        const float* fr = w.frow.data() + (r % bq) * kBk;
        const Vec vm(w.m[r]), vinvz(w.invz[r]), vdd(w.dd[r]);
        for (int64_t j = 0; j < npad; j += Vec::size()) {
          const Vec e = at::vec::minimum(Vec::loadu(s + j) - vm, Vec(0.0f)).exp_u20();
          const Vec mv = Vec::loadu(mr + j);
          const Vec gg = (Vec::loadu(da + j) - vdd) * vinvz;
          const Vec ge = gg * e;
          (e * mv * vinvz).store(s + j);
          (ge * mv).store(da + j);
          if (keep != nullptr) (Vec::loadu(w.dkeep.data() + j) + ge * Vec::loadu(fr + j)).store(w.dkeep.data() + j);
        }
      }
      // P^T and dS^T: [n, R] row-major.
      transpose_into(w.s.data(), kBk, R, n, w.pt.data());
      transpose_into(w.da.data(), kBk, R, n, w.dst.data());
      at::native::cpublas::brgemm(n, hd, R, R, hd, hd, true, w.pt.data(), w.dout.data(), in.dv + (bgk + j0) * hd,
                                  false);
      at::native::cpublas::brgemm(n, hd, R, R, hd, hd, true, w.dst.data(), w.q.data(), in.dk + (bgk + j0) * hd,
                                  false);
      at::native::cpublas::brgemm(R, hd, n, kBk, hd, hd, true, w.da.data(), in.kf + (bgk + j0) * hd, w.dq.data(),
                                  false);
      if (keep != nullptr) {
        for (int64_t j = 0; j < n; ++j) in.dkeep[bgk + j0 + j] += w.dkeep[j];
      }
    }
    if (!touched) continue;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t gm = r / bq, i = r % bq;
      float* dst = in.dq_part + ((b * p.H + g * p.G + gm) * p.Tq + q0 + i) * hd;
      const float* src = w.dq.data() + r * hd;
      for (int64_t d = 0; d < hd; ++d) dst[d] = src[d] * p.scale;
    }
  }
}

}  // namespace

FlashGrads flash_backward_cpu(const FlashArgs& a, const FlashForward& f, const at::Tensor& dout) {
  Problem p = problem_of(a);
  const at::Tensor qs = f32(a.q * p.scale), kf = f32(a.k), kt = f32(a.k.transpose(2, 3)), vt = f32(a.v.transpose(2, 3));
  const at::Tensor dof = f32(dout);
  const at::Tensor dd = (dof * f.out.to(at::kFloat)).sum(-1).contiguous();  // D_i = dO_i . O_i
  const at::Tensor m = f32(f.m), z = f32(f.z);
  const at::Tensor qp = a.q_pos.to(at::kLong).contiguous(), kp = a.k_pos.to(at::kLong).contiguous();
  const at::Tensor keep = a.keep.defined() ? f32(a.keep) : at::Tensor();
  p.qp = qp.data_ptr<int64_t>(), p.kp = kp.data_ptr<int64_t>();
  p.kcontig = consecutive(p.kp, p.Tk);
  p.keep = keep.defined() ? keep.data_ptr<float>() : nullptr;
  // Key chunks per (b, KV head): enough tasks for every thread, whole tiles each.
  const int64_t tiles = (p.Tk + kBk - 1) / kBk;
  const int64_t want = (2 * at::get_num_threads() + p.B * p.Hkv - 1) / (p.B * p.Hkv);
  const int64_t chunks = std::max<int64_t>(1, std::min(tiles, want));
  const int64_t tiles_per_chunk = (tiles + chunks - 1) / chunks;
  const at::TensorOptions fo = qs.options();
  at::Tensor dq_part = at::zeros({chunks, p.B, p.H, p.Tq, p.hd}, fo);
  at::Tensor dk = at::zeros({p.B, p.Hkv, p.Tk, p.hd}, fo), dv = at::zeros({p.B, p.Hkv, p.Tk, p.hd}, fo);
  at::Tensor dkeep = keep.defined() ? at::zeros({p.B, p.Hkv, p.Tk}, fo) : at::Tensor();
  at::parallel_for(0, p.B * p.Hkv * chunks, 1, [&](int64_t begin, int64_t end) {
    BackwardScratch w(p);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bg = t / chunks, c = t % chunks;
      const int64_t k0 = c * tiles_per_chunk * kBk, k1 = std::min(p.Tk, (c + 1) * tiles_per_chunk * kBk);
      if (k0 >= k1) continue;
      BackwardInputs in{qs.data_ptr<float>(), kf.data_ptr<float>(), kt.data_ptr<float>(), vt.data_ptr<float>(),
                        dof.data_ptr<float>(), dd.data_ptr<float>(), m.data_ptr<float>(), z.data_ptr<float>(),
                        dq_part.data_ptr<float>() + c * p.B * p.H * p.Tq * p.hd, dk.data_ptr<float>(), dv.data_ptr<float>(),
                        dkeep.defined() ? dkeep.data_ptr<float>() : nullptr};
      backward_chunk(p, in, bg / p.Hkv, bg % p.Hkv, k0, k1, w);
    }
    at::native::cpublas::brgemm_release();
  });
  at::Tensor dq = chunks == 1 ? dq_part[0] : dq_part.sum(0);
  return {dq.to(a.q.scalar_type()), dk.to(a.k.scalar_type()), dv.to(a.v.scalar_type()), dkeep};
}

}  // namespace agate::kernels
