// See rms_norm_cpu.h. Hand-written because the ATen formula is eight element-wise passes forward
// and about a dozen backward over [N, D] (with float32 copies between them); here a row is read
// once per pass in L1. Row sums use at::vec vectors (compiled for AVX2 + FMA like the attention
// kernel); the per-element roundings to T mirror the ATen formula's.
#include "rms_norm_cpu.h"

#include "../util/cpu_vec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace agate::kernels {

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();

float dot(const float* a, const float* b, int64_t n) {
  Vec acc(0.0f);
  int64_t j = 0;
  for (; j + kW <= n; j += kW) acc = at::vec::fmadd(Vec::loadu(a + j), Vec::loadu(b + j), acc);
  float s = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// v <- float(T(v)) in place, through tmp; nothing to do when T is float32.
template <typename T>
void round_through(float* v, T* tmp, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) {
    from_float(v, tmp, n);
    to_float(tmp, v, n);
  }
}

// y = T(T(x * r) * w) over a row, in float32 buffers (T's roundings applied in place).
template <typename T>
void scale_row(const float* x, float r, const float* w, int64_t D, float* y, T* tmp) {
  for (int64_t j = 0; j < D; ++j) y[j] = x[j] * r;
  round_through(y, tmp, D);  // T(x * r)
  for (int64_t j = 0; j < D; ++j) y[j] *= w[j];
}

template <typename T>
void forward_rows(const T* x, const T* w, int64_t N, int64_t D, float eps, T* out, float* r) {
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> xf(static_cast<size_t>(D)), wf(static_cast<size_t>(D)), y(static_cast<size_t>(D));
    std::vector<T> tmp(static_cast<size_t>(D));
    to_float(w, wf.data(), D);
    for (int64_t i = r0; i < r1; ++i) {
      to_float(x + i * D, xf.data(), D);
      const float ri = 1.0f / std::sqrt(dot(xf.data(), xf.data(), D) / static_cast<float>(D) + eps);
      r[i] = ri;
      scale_row(xf.data(), ri, wf.data(), D, y.data(), tmp.data());
      from_float(y.data(), out + i * D, D);
    }
  });
}

template <typename T>
void backward_rows(const T* g, const T* x, const T* w, const float* r, int64_t N, int64_t D, T* dx) {
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> gy(static_cast<size_t>(D)), xh(static_cast<size_t>(D)), wf(static_cast<size_t>(D));
    std::vector<T> tmp(static_cast<size_t>(D));
    to_float(w, wf.data(), D);
    for (int64_t i = r0; i < r1; ++i) {
      const float ri = r[i];
      to_float(g + i * D, gy.data(), D);
      for (int64_t j = 0; j < D; ++j) gy[j] *= wf[j];
      round_through(gy.data(), tmp.data(), D);  // T(g * w), as the formula's product in T
      to_float(x + i * D, xh.data(), D);
      for (int64_t j = 0; j < D; ++j) xh[j] *= ri;
      const float mean = dot(gy.data(), xh.data(), D) / static_cast<float>(D);
      for (int64_t j = 0; j < D; ++j) gy[j] = ri * (gy[j] - xh[j] * mean);
      from_float(gy.data(), dx + i * D, D);
    }
  });
}

}  // namespace

std::pair<at::Tensor, at::Tensor> rms_norm_forward_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::empty_like(x), r = at::empty({N}, x.options().dtype(at::kFloat));
  const at::Tensor w = weight.contiguous();
  if (x.scalar_type() == at::kBFloat16) {
    forward_rows(x.const_data_ptr<at::BFloat16>(), w.const_data_ptr<at::BFloat16>(), N, D, static_cast<float>(eps),
                 out.data_ptr<at::BFloat16>(), r.data_ptr<float>());
  } else {
    forward_rows(x.const_data_ptr<float>(), w.const_data_ptr<float>(), N, D, static_cast<float>(eps),
                 out.data_ptr<float>(), r.data_ptr<float>());
  }
  return {out, r};
}

at::Tensor rms_norm_backward_cpu(const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& r) {
  const int64_t N = x.size(0), D = x.size(1);
  const at::Tensor gc = g.contiguous(), w = weight.contiguous();
  at::Tensor dx = at::empty_like(x);
  if (x.scalar_type() == at::kBFloat16) {
    backward_rows(gc.const_data_ptr<at::BFloat16>(), x.const_data_ptr<at::BFloat16>(), w.const_data_ptr<at::BFloat16>(),
                  r.const_data_ptr<float>(), N, D, dx.data_ptr<at::BFloat16>());
  } else {
    backward_rows(gc.const_data_ptr<float>(), x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                  r.const_data_ptr<float>(), N, D, dx.data_ptr<float>());
  }
  return dx;
}

}  // namespace agate::kernels
