// See swiglu_cpu.h. Hand-written because the ATen formula is two passes forward and three
// backward (silu, mul; two muls, silu_backward), each over the [N, I] activations; here each
// block of elements is converted once and every step runs on float32 vectors in L1.
#include "swiglu_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "../util/cpu_vec.h"

namespace agate::kernels {

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr int64_t kBlock = 2048;  // elements per step of a thread

// x <- T(x) in place (the rounding an op producing T applies).
template <typename T>
void round_to(float* x, T* tmp, int64_t n) {
  from_float(x, tmp, n);
  to_float(tmp, x, n);
}

// s <- sigmoid(g); a <- g * s (silu), ATen's formula g / (1 + exp(-g)) for a.
void silu_sigmoid(const float* g, float* a, float* s, int64_t n) {
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const Vec x = Vec::loadu(g + j), d = Vec(1.0f) + x.neg().exp();
    (x / d).store(a + j);
    if (s != nullptr) (Vec(1.0f) / d).store(s + j);
  }
  for (; j < n; ++j) {
    const float d = 1.0f + std::exp(-g[j]);
    a[j] = g[j] / d;
    if (s != nullptr) s[j] = 1.0f / d;
  }
}

template <typename T>
void forward(const T* g, const T* u, T* out, int64_t N) {
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> gf(kBlock), uf(kBlock), a(kBlock);
    std::vector<T> tmp(kBlock);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * kBlock, n = std::min(kBlock, N - o);
      to_float(g + o, gf.data(), n);
      to_float(u + o, uf.data(), n);
      silu_sigmoid(gf.data(), a.data(), nullptr, n);
      round_to(a.data(), tmp.data(), n);
      for (int64_t j = 0; j < n; ++j) a[j] *= uf[j];
      from_float(a.data(), out + o, n);
    }
  });
}

template <typename T>
void backward(const T* dy, const T* g, const T* u, T* dg, T* du, int64_t N) {
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> gf(kBlock), uf(kBlock), df(kBlock), a(kBlock), s(kBlock), da(kBlock);
    std::vector<T> tmp(kBlock);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * kBlock, n = std::min(kBlock, N - o);
      to_float(g + o, gf.data(), n);
      to_float(u + o, uf.data(), n);
      to_float(dy + o, df.data(), n);
      silu_sigmoid(gf.data(), a.data(), s.data(), n);
      round_to(a.data(), tmp.data(), n);
      for (int64_t j = 0; j < n; ++j) a[j] *= df[j];  // du
      from_float(a.data(), du + o, n);
      for (int64_t j = 0; j < n; ++j) da[j] = df[j] * uf[j];
      round_to(da.data(), tmp.data(), n);
      for (int64_t j = 0; j < n; ++j) da[j] = da[j] * s[j] * (1.0f + gf[j] * (1.0f - s[j]));  // dg
      from_float(da.data(), dg + o, n);
    }
  });
}

}  // namespace

at::Tensor swiglu_forward_cpu(const at::Tensor& g, const at::Tensor& u) {
  at::Tensor out = at::empty_like(g);
  if (g.scalar_type() == at::kBFloat16) {
    forward(g.const_data_ptr<at::BFloat16>(), u.const_data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), g.numel());
  } else {
    forward(g.const_data_ptr<float>(), u.const_data_ptr<float>(), out.data_ptr<float>(), g.numel());
  }
  return out;
}

std::pair<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& dy, const at::Tensor& g, const at::Tensor& u) {
  const at::Tensor d = dy.contiguous();
  at::Tensor dg = at::empty_like(g), du = at::empty_like(u);
  if (g.scalar_type() == at::kBFloat16) {
    backward(d.const_data_ptr<at::BFloat16>(), g.const_data_ptr<at::BFloat16>(), u.const_data_ptr<at::BFloat16>(),
             dg.data_ptr<at::BFloat16>(), du.data_ptr<at::BFloat16>(), g.numel());
  } else {
    backward(d.const_data_ptr<float>(), g.const_data_ptr<float>(), u.const_data_ptr<float>(), dg.data_ptr<float>(),
             du.data_ptr<float>(), g.numel());
  }
  return {dg, du};
}

}  // namespace agate::kernels
