// See cross_entropy_cpu.h. Hand-written because ATen's chain (convert to float32, log_softmax,
// exp, scale, scatter, convert back) makes six passes over each chunk; here a row (32 KB of
// float32 at V = 8,192) is converted once into a thread-local buffer and every other pass runs
// in L1. Vectorised with at::vec (Sleef's exp, 1 ULP), compiled for AVX2 + FMA like the
// attention kernel.
#include "cross_entropy_cpu.h"

#include "../util/cpu_vec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace agate::kernels {

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();

// One row: buf <- float(x); returns logsumexp; leaves exp(x - max) in buf and their sum in *sum.
template <typename T>
float row_logsumexp(const T* x, int64_t V, float* buf, float* sum) {
  to_float(x, buf, V);
  int64_t j = 0;
  Vec vmax(-std::numeric_limits<float>::infinity());
  for (; j + kW <= V; j += kW) vmax = at::vec::maximum(vmax, Vec::loadu(buf + j));
  float m = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  for (; j < V; ++j) m = std::max(m, buf[j]);
  const Vec vm(m);
  Vec vs(0.0f);
  for (j = 0; j + kW <= V; j += kW) {
    const Vec e = (Vec::loadu(buf + j) - vm).exp();
    e.store(buf + j);
    vs = vs + e;
  }
  float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vs);
  for (; j < V; ++j) s += (buf[j] = std::exp(buf[j] - m));
  *sum = s;
  return m + std::log(s);
}

template <typename T>
void rows(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& coef, const at::Tensor& grad,
          at::Tensor& nll) {
  const int64_t n = logits.size(0), V = logits.size(1);
  const T* x = logits.const_data_ptr<T>();
  const int64_t* t = targets.const_data_ptr<int64_t>();
  const float* c = coef.const_data_ptr<float>();
  T* g = grad.defined() ? grad.data_ptr<T>() : nullptr;
  float* out = nll.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(static_cast<size_t>(V));
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * V;
      float sum = 0.0f;
      const float lse = row_logsumexp(xr, V, buf.data(), &sum);
      out[r] = lse - static_cast<float>(xr[t[r]]);
      if (g == nullptr) continue;
      const float scale = c[r] / sum;
      const Vec vscale(scale);
      int64_t j = 0;
      for (; j + kW <= V; j += kW) (Vec::loadu(buf.data() + j) * vscale).store(buf.data() + j);
      for (; j < V; ++j) buf[j] *= scale;
      buf[t[r]] -= c[r];
      from_float(buf.data(), g + r * V, V);
    }
  });
}

}  // namespace

at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& coef,
                              const at::Tensor& grad) {
  at::Tensor nll = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  const at::Tensor c = coef.reshape({-1}).to(at::kFloat).contiguous();
  const at::Tensor t = targets.reshape({-1}).contiguous();
  if (logits.scalar_type() == at::kBFloat16) rows<at::BFloat16>(logits, t, c, grad, nll);
  else rows<float>(logits, t, c, grad, nll);
  return nll;
}

}  // namespace agate::kernels
