// Row conversions between float32 and the compute dtype for agate's CPU row kernels (the fused
// LM loss, RMSNorm), vectorised with ATen's at::vec (a scalar bfloat16 -> float32 loop was most
// of the loss kernel's time). Header-only; include from files compiled with the kernels'
// flags (CMakeLists.txt). Internal to src/.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace agate::kernels {

inline void to_float(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }

inline void to_float(const at::BFloat16* src, float* dst, int64_t n) {
  using BVec = at::vec::Vectorized<at::BFloat16>;
  using FVec = at::vec::Vectorized<float>;
  int64_t j = 0;
  for (; j + BVec::size() <= n; j += BVec::size()) {
    auto [lo, hi] = at::vec::convert_to_float<at::BFloat16>(BVec::loadu(src + j));
    lo.store(dst + j);
    hi.store(dst + j + FVec::size());
  }
  for (; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

// dst = T(src), rounding to nearest even for bfloat16.
inline void from_float(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }

inline void from_float(const float* src, at::BFloat16* dst, int64_t n) { at::vec::convert(src, dst, n); }

}  // namespace agate::kernels
