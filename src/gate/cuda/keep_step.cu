// agate's fused CUDA keep step (see agate/gate/keep_step.h for the semantics; its ATen twin is
// in src/gate/keep_step.cpp).
//
// Forward, one launch over the N = B*T*Hkv elements of p (contiguous, g fastest):
//   grid  = min(ceil(N / 256), 8 * SMs) blocks of 256 threads, grid-stride;
//   the stride `span` is the grid's thread count rounded down to a multiple of Hkv, so a
//   thread only ever meets one KV head g = gid % Hkv: it counts its kept flags in a register,
//   then adds the count to a per-block shared counter of g (Hkv unsigned ints of dynamic
//   shared memory), and each block adds its Hkv counts to flag_sum with one float atomicAdd
//   per head. The counts are integers, so the float sum is exact (below 2^24) and the same in
//   every run whatever the order of the atomics.
//   Each element reads p and positions[t] (t is advanced by a constant step mod T, no
//   division in the loop) and writes flags (and keep unless kHard, where keep is flags).
// Backward, one launch of the same shape: dp = positions[t] < sink_tokens ? 0 : dkeep.
// Everything is enqueued on the current stream; nothing waits for the device.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "keep_step_cuda.h"

namespace agate::gate_cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxHeads = 4096;  // shared counters: 16 KiB

struct Launch {
  int blocks;
  int64_t span;    // elements between a thread's consecutive visits: a multiple of H
  int64_t t_step;  // (span / H) % T: how far t moves per visit
};

// n = B*T*H elements, h = H heads, t = T positions.
Launch launch_shape(int64_t n, int64_t H, int64_t T) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 8 * sms);
  blocks = std::max<int64_t>(blocks, (H + kThreads - 1) / kThreads);  // at least H threads
  const int64_t span = (blocks * kThreads / H) * H;
  return {static_cast<int>(blocks), span, (span / H) % T};
}

// p, keep, flags: [N] (= [B, T, H] contiguous); pos: [T]; flag_sum: [H], zeroed.
template <bool kWriteKeep, bool kSoftKeep>
__global__ void __launch_bounds__(kThreads)
    keep_step_forward_kernel(const float* __restrict__ p, const int64_t* __restrict__ pos, float* __restrict__ keep,
                             float* __restrict__ flags, float* __restrict__ flag_sum, int64_t n, int64_t T, int64_t H,
                             int64_t span, int64_t t_step, float threshold, int64_t sink_tokens, int forced) {
  extern __shared__ unsigned int head_count[];  // [H], this block's kept flags per head
  for (int64_t g = threadIdx.x; g < H; g += blockDim.x) head_count[g] = 0;
  __syncthreads();

  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid < span) {
    const int64_t g = gid % H;
    int64_t t = (gid / H) % T;
    unsigned int kept = 0;
    for (int64_t i = gid; i < n; i += span) {
      const bool sink = pos[t] < sink_tokens;
      const float pv = p[i];
      const float f = sink ? 1.0f : forced >= 0 ? static_cast<float>(forced) : (pv > threshold ? 1.0f : 0.0f);
      flags[i] = f;
      if (kWriteKeep) keep[i] = sink ? 1.0f : (kSoftKeep ? pv : f);
      kept += f != 0.0f;
      t += t_step;
      if (t >= T) t -= T;
    }
    if (kept) atomicAdd(&head_count[g], kept);
  }
  __syncthreads();
  for (int64_t g = threadIdx.x; g < H; g += blockDim.x) {
    if (head_count[g]) atomicAdd(&flag_sum[g], static_cast<float>(head_count[g]));
  }
}

// dkeep, dp: [N] (= [B, T, H] contiguous); pos: [T].
__global__ void __launch_bounds__(kThreads)
    keep_step_backward_kernel(const float* __restrict__ dkeep, const int64_t* __restrict__ pos, float* __restrict__ dp,
                              int64_t n, int64_t T, int64_t H, int64_t span, int64_t t_step, int64_t sink_tokens) {
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gid >= span) return;
  int64_t t = (gid / H) % T;
  for (int64_t i = gid; i < n; i += span) {
    dp[i] = pos[t] < sink_tokens ? 0.0f : dkeep[i];
    t += t_step;
    if (t >= T) t -= T;
  }
}

void check(const at::Tensor& x, const at::Tensor& positions, const char* what) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 3 && x.scalar_type() == at::kFloat, "keep_step (CUDA): ", what,
              " must be a [B, T, Hkv] float32 CUDA tensor, got ", x.sizes(), " ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(positions.device() == x.device() && positions.scalar_type() == at::kLong && positions.dim() == 1 &&
                  positions.size(0) == x.size(1) && positions.is_contiguous(),
              "keep_step (CUDA): positions must be [T] int64 contiguous on ", x.device());
  TORCH_CHECK(x.size(2) >= 1 && x.size(2) <= kMaxHeads, "keep_step (CUDA): Hkv must be in [1, ", kMaxHeads, "]");
}

}  // namespace

KeepStepResult keep_step_forward(const at::Tensor& p_in, const at::Tensor& positions, double threshold,
                                 int64_t sink_tokens, KeepMode mode, int forced) {
  check(p_in, positions, "p");
  TORCH_CHECK(forced >= -1 && forced <= 1, "keep_step (CUDA): forced must be -1, 0 or 1");
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous();
  const int64_t T = p.size(1), H = p.size(2), n = p.numel();
  KeepStepResult r;
  r.flags = at::empty_like(p);
  r.keep = mode == KeepMode::kHard ? r.flags : at::empty_like(p);
  r.flag_sum = at::zeros({H}, p.options());
  if (n == 0) return r;

  const Launch L = launch_shape(n, H, T);
  const size_t shared = static_cast<size_t>(H) * sizeof(unsigned int);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // The threshold as float32, as the ATen twin's `p > threshold` compares it.
  const float thr = static_cast<float>(threshold);
  auto* keep = r.keep.data_ptr<float>();
  auto* flags = r.flags.data_ptr<float>();
  auto* sum = r.flag_sum.data_ptr<float>();
  const float* pp = p.data_ptr<float>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  switch (mode) {
    case KeepMode::kHard:
      keep_step_forward_kernel<false, false><<<L.blocks, kThreads, shared, stream>>>(
          pp, pos, keep, flags, sum, n, T, H, L.span, L.t_step, thr, sink_tokens, forced);
      break;
    case KeepMode::kStraightThrough:
      keep_step_forward_kernel<true, false><<<L.blocks, kThreads, shared, stream>>>(
          pp, pos, keep, flags, sum, n, T, H, L.span, L.t_step, thr, sink_tokens, forced);
      break;
    case KeepMode::kSoft:
      keep_step_forward_kernel<true, true><<<L.blocks, kThreads, shared, stream>>>(
          pp, pos, keep, flags, sum, n, T, H, L.span, L.t_step, thr, sink_tokens, forced);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return r;
}

at::Tensor keep_step_backward(const at::Tensor& dkeep_in, const at::Tensor& positions, int64_t sink_tokens) {
  check(dkeep_in, positions, "dkeep");
  if (sink_tokens <= 0) return dkeep_in;  // the identity: no launch, no copy
  const c10::cuda::CUDAGuard guard(dkeep_in.device());
  const at::Tensor dkeep = dkeep_in.contiguous();  // e.g. the expanded gradient of a mean
  at::Tensor dp = at::empty_like(dkeep);
  const int64_t T = dkeep.size(1), H = dkeep.size(2), n = dkeep.numel();
  if (n == 0) return dp;
  const Launch L = launch_shape(n, H, T);
  keep_step_backward_kernel<<<L.blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      dkeep.data_ptr<float>(), positions.data_ptr<int64_t>(), dp.data_ptr<float>(), n, T, H, L.span, L.t_step,
      sink_tokens);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dp;
}

}  // namespace agate::gate_cuda
