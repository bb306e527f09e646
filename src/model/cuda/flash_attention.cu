// agate's blocked ("flash") gated attention on CUDA: the contract of flash_attention.h (its CPU
// twin is flash_attention_cpu.cpp, the ground truth masked_attention_reference in attention.cpp).
// This file is the host side: input checks, dispatch and launches. The kernels:
//   flash_tc.cuh   bfloat16 inputs, head dim <= 128: tensor cores (WMMA, bf16 x bf16 -> f32);
//   flash_fma.cuh  float32 inputs (exact float32 arithmetic), and bfloat16 with head dim > 128:
//                  float32 FMAs on shared-memory tiles;
//   flash_common.cuh  parameters, the mask, the tile-skipping test, the D = dout . out kernel.
// Both families: forward one launch; backward three (D, then dK/dV/dkeep owned per key tile,
// then dQ owned per row tile); no atomics, every result bitwise reproducible; memory linear in T
// (the only buffer besides the outputs is D, one float per query row).
// Everything is enqueued on the current stream of the inputs' device; nothing waits for the
// device or reads device memory from the host.
// Tests: tests/model/test_flash_cuda.cpp (against the float64 reference; needs a device).
// tools/flash_cuda_emu/run.sh runs these kernels and this host code on the CPU under an
// emulation of the CUDA features used (threads, barriers, shuffles, wmma) against the same tests.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../dispatch.h"
#include "../flash_attention.h"
#include "flash_common.cuh"
#include "flash_fma.cuh"
#include "flash_tc.cuh"

namespace agate::kernels {

namespace {

// ---------------------------------------------------------------------------------------------
// Host side.

struct Inputs {
  at::Tensor q, k, v, qp, kp, keep;
  Params p;
};

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

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
  p.du = a.dense_until;
  in.q = a.q.contiguous();
  in.k = a.k.contiguous();
  in.v = a.v.contiguous();
  // Positions on the device as int64 (a no-op when they already are).
  in.qp = a.q_pos.to(a.q.device(), at::kLong).contiguous();
  in.kp = a.k_pos.to(a.q.device(), at::kLong).contiguous();
  p.qp = in.qp.data_ptr<int64_t>();
  p.kp = in.kp.data_ptr<int64_t>();
  p.keep = nullptr;
  p.vec = p.hd % 8 == 0 && aligned16(in.q) && aligned16(in.k) && aligned16(in.v);
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

// The tensor-core kernels (flash_tc.cuh) take bfloat16 inputs with head dims up to
// kTcMaxHeadDim; the rest goes to the FMA kernels (flash_fma.cuh).
bool use_tensor_cores(const Params& p, at::ScalarType st) { return st == at::kBFloat16 && p.hd <= kTcMaxHeadDim; }

// Calls f(std::integral_constant<int, D>) for the smallest tensor-core bucket D >= hd.
template <typename F>
void with_tc_head_dim(int64_t hd, F&& f) {
  if (hd <= 32) f(std::integral_constant<int, 32>{});
  else if (hd <= 64) f(std::integral_constant<int, 64>{});
  else if (hd <= 96) f(std::integral_constant<int, 96>{});
  else if (hd <= 128) f(std::integral_constant<int, 128>{});
  else TORCH_CHECK(false, "flash attention (CUDA): head dim ", hd, " is above the tensor-core kernels' ", kTcMaxHeadDim);
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

int grid_dim(int64_t n, int64_t tile = kTile) { return static_cast<int>((n + tile - 1) / tile); }

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
  if (use_tensor_cores(p, in.q.scalar_type())) {
    const dim3 grid(grid_dim(p.R, TcForward<32>::kRows), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
    with_tc_head_dim(p.hd, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      auto kernel = flash_forward_tc_kernel<D>;
      set_shared_memory(kernel, TcForward<D>::kBytes, p.hd);
      kernel<<<grid, kTcThreads, TcForward<D>::kBytes, stream>>>(p, ptr<bf16>(in.q), ptr<bf16>(in.k), ptr<bf16>(in.v),
                                                                 mut_ptr<bf16>(f.out), mut_ptr<float>(f.m),
                                                                 mut_ptr<float>(f.z));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return f;
  }
  const dim3 grid(grid_dim(p.R), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
  with_head_dim(p.hd, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    AGATE_DISPATCH_FLOAT_BF16(in.q.scalar_type(), "flash attention (CUDA)", [&] {
      using T = scalar_t;
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
  AGATE_DISPATCH_FLOAT_BF16(st, "flash attention backward (CUDA)", [&] {
    using T = scalar_t;
    if (rows > 0) {
      const int64_t warps = kRowDotThreads / 32;
      const int64_t blocks = (rows + warps - 1) / warps;
      TORCH_CHECK(blocks <= INT32_MAX, "flash attention backward (CUDA): too many rows");
      row_dot_kernel<T><<<static_cast<unsigned>(blocks), kRowDotThreads, 0, stream>>>(ptr<T>(dout), ptr<T>(out),
                                                                               mut_ptr<float>(dd), rows, p.hd);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (use_tensor_cores(p, st)) {
      Params pb = p;
      pb.vec = p.vec && aligned16(dout);
      with_tc_head_dim(p.hd, [&](auto dc) {
        constexpr int D = decltype(dc)::value;
        if (p.Tk > 0) {
          const dim3 grid(grid_dim(p.Tk, TcBackwardKV<D>::kKeys), static_cast<unsigned>(p.Hkv),
                          static_cast<unsigned>(p.B));
          auto kernel = flash_backward_kv_tc_kernel<D>;
          set_shared_memory(kernel, TcBackwardKV<D>::kBytes, p.hd);
          kernel<<<grid, kTcThreads, TcBackwardKV<D>::kBytes, stream>>>(
              pb, ptr<bf16>(in.q), ptr<bf16>(in.k), ptr<bf16>(in.v), ptr<bf16>(dout), ptr<float>(m), ptr<float>(z),
              ptr<float>(dd), mut_ptr<bf16>(gr.dk), mut_ptr<bf16>(gr.dv),
              gr.dkeep.defined() ? mut_ptr<float>(gr.dkeep) : nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (p.R > 0) {
          const dim3 grid(grid_dim(p.R, TcBackwardQ<D>::kRows), static_cast<unsigned>(p.Hkv),
                          static_cast<unsigned>(p.B));
          auto kernel = flash_backward_q_tc_kernel<D>;
          set_shared_memory(kernel, TcBackwardQ<D>::kBytes, p.hd);
          kernel<<<grid, kTcThreads, TcBackwardQ<D>::kBytes, stream>>>(
              pb, ptr<bf16>(in.q), ptr<bf16>(in.k), ptr<bf16>(in.v), ptr<bf16>(dout), ptr<float>(m), ptr<float>(z),
              ptr<float>(dd), mut_ptr<bf16>(gr.dq));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
      return;
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