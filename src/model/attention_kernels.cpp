#include "attention_kernels.h"

#include "dispatch.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace agate::kernels {

namespace {

struct Layout {
  int64_t B, Hkv, G, Tq, Tk;
};

Layout layout_of(const at::Tensor& rows, const at::Tensor& keep, const at::Tensor& allowed, int64_t G) {
  const int64_t B = keep.size(0), Tk = keep.size(1), Hkv = keep.size(2), Tq = allowed.size(0);
  TORCH_CHECK(rows.size(0) == B * Hkv * G * Tq && rows.size(1) == Tk, "gated softmax: bad shapes");
  return {B, Hkv, G, Tq, Tk};
}

// M for one (b, kv head) block: m[i * Tk + j], float.
void block_mask(const Layout& L, const float* keep, int64_t b, int64_t h, const bool* allowed, const bool* always,
                std::vector<float>& m) {
  m.resize(static_cast<size_t>(L.Tq * L.Tk));
  for (int64_t i = 0; i < L.Tq; ++i) {
    for (int64_t j = 0; j < L.Tk; ++j) {
      const int64_t ij = i * L.Tk + j;
      m[ij] = allowed[ij] ? (always[ij] ? 1.0f : keep[(b * L.Tk + j) * L.Hkv + h]) : 0.0f;
    }
  }
}

// Pass 1 (per row): the max over visible keys, then s := min(s - max, 0). The exp between the
// passes runs as one vectorised ATen op over the whole tensor.
void forward_shift(float* s, const float* keep, const bool* allowed, const bool* always, const Layout& L) {
  at::parallel_for(0, L.B * L.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> m;
    for (int64_t bh = begin; bh < end; ++bh) {
      block_mask(L, keep, bh / L.Hkv, bh % L.Hkv, allowed, always, m);
      for (int64_t gi = 0; gi < L.G * L.Tq; ++gi) {
        float* sr = s + (bh * L.G * L.Tq + gi) * L.Tk;
        const float* mr = m.data() + (gi % L.Tq) * L.Tk;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < L.Tk; ++j) mx = mr[j] > 0 ? std::max(mx, sr[j]) : mx;
        if (!std::isfinite(mx)) mx = 0;
        for (int64_t j = 0; j < L.Tk; ++j) sr[j] = std::min(sr[j] - mx, 0.0f);
      }
    }
  });
}

// Pass 2 (per row): z = sum e M, a = e M / z.
template <typename out_t>
void forward_normalise(const float* e, const float* keep, const bool* allowed, const bool* always, const Layout& L,
                       float* z, out_t* a) {
  at::parallel_for(0, L.B * L.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> m;
    for (int64_t bh = begin; bh < end; ++bh) {
      block_mask(L, keep, bh / L.Hkv, bh % L.Hkv, allowed, always, m);
      for (int64_t gi = 0; gi < L.G * L.Tq; ++gi) {
        const int64_t r = bh * L.G * L.Tq + gi;
        const float* er = e + r * L.Tk;
        const float* mr = m.data() + (gi % L.Tq) * L.Tk;
        float sum = 0;
        for (int64_t j = 0; j < L.Tk; ++j) sum += er[j] * mr[j];
        z[r] = sum;
        const float inv = 1.0f / sum;
        out_t* ar = a + r * L.Tk;
        for (int64_t j = 0; j < L.Tk; ++j) ar[j] = static_cast<out_t>(er[j] * mr[j] * inv);
      }
    }
  });
}

template <typename out_t>
void backward_impl(float* da, const float* e, const float* z, const float* keep, const bool* allowed,
                   const bool* always, const Layout& L, float scale, out_t* a, float* dkeep) {
  at::parallel_for(0, L.B * L.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> m, acc(static_cast<size_t>(L.Tk));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / L.Hkv, h = bh % L.Hkv;
      block_mask(L, keep, b, h, allowed, always, m);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t gi = 0; gi < L.G * L.Tq; ++gi) {
        const int64_t r = bh * L.G * L.Tq + gi, i = gi % L.Tq;
        float* dr = da + r * L.Tk;
        const float* er = e + r * L.Tk;
        const float* mr = m.data() + i * L.Tk;
        const bool* al = allowed + i * L.Tk;
        const bool* aw = always + i * L.Tk;
        const float inv = 1.0f / z[r];
        out_t* ar = a + r * L.Tk;
        float dot = 0;
        for (int64_t j = 0; j < L.Tk; ++j) {
          const float aj = er[j] * mr[j] * inv;
          ar[j] = static_cast<out_t>(aj);
          dot += dr[j] * aj;
        }
        for (int64_t j = 0; j < L.Tk; ++j) {
          const float g = (dr[j] - dot) * inv, dm = g * er[j];
          if (al[j] && !aw[j]) acc[j] += dm;
          dr[j] = dm * mr[j] * scale;
        }
      }
      for (int64_t j = 0; j < L.Tk; ++j) dkeep[(b * L.Tk + j) * L.Hkv + h] = acc[j];
    }
  });
}

}  // namespace

void gated_softmax_forward(at::Tensor& s, const at::Tensor& keep, const at::Tensor& allowed, const at::Tensor& always,
                           int64_t G, at::Tensor& z, at::Tensor& a) {
  const Layout L = layout_of(s, keep, allowed, G);
  TORCH_CHECK(s.is_contiguous() && keep.is_contiguous() && allowed.is_contiguous() && always.is_contiguous() &&
                  a.is_contiguous() && s.scalar_type() == at::kFloat && keep.scalar_type() == at::kFloat,
              "gated softmax: expects contiguous float32 inputs");
  const float* kp = keep.data_ptr<float>();
  const bool *al = allowed.data_ptr<bool>(), *aw = always.data_ptr<bool>();
  forward_shift(s.data_ptr<float>(), kp, al, aw, L);
  s.exp_();
  AGATE_DISPATCH_FLOAT_BF16(a.scalar_type(), "gated softmax", [&] {
    forward_normalise(s.data_ptr<float>(), kp, al, aw, L, z.data_ptr<float>(), a.data_ptr<scalar_t>());
  });
}

void gated_softmax_backward(at::Tensor& da, const at::Tensor& e, const at::Tensor& z, const at::Tensor& keep,
                            const at::Tensor& allowed, const at::Tensor& always, int64_t G, double scale,
                            at::Tensor& a, at::Tensor& dkeep) {
  const Layout L = layout_of(da, keep, allowed, G);
  TORCH_CHECK(da.is_contiguous() && e.is_contiguous() && a.is_contiguous() && dkeep.is_contiguous() &&
                  da.scalar_type() == at::kFloat && e.scalar_type() == at::kFloat,
              "gated softmax backward: expects contiguous float32 inputs");
  AGATE_DISPATCH_FLOAT_BF16(a.scalar_type(), "gated softmax backward", [&] {
    backward_impl(da.data_ptr<float>(), e.data_ptr<float>(), z.data_ptr<float>(), keep.data_ptr<float>(),
                  allowed.data_ptr<bool>(), always.data_ptr<bool>(), L, static_cast<float>(scale),
                  a.data_ptr<scalar_t>(), dkeep.data_ptr<float>());
  });
}

}  // namespace agate::kernels
