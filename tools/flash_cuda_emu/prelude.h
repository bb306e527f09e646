// Host emulation of the CUDA features agate's flash kernels use (tools/flash_cuda_emu/run.sh):
// each block's threads are ucontext coroutines on one OS thread, scheduled in a random order
// every round; __syncthreads is a block barrier, __syncwarp a warp barrier, __shfl_xor_sync and
// __any_sync per-warp exchanges between two warp barriers; a barrier that can never complete
// aborts (divergent barriers). nvcuda::wmma (bf16 m16n16k16, float accumulators) is emulated
// with a scrambled fragment layout (see the wmma section at the end).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <random>
#include <cstdio>
#include <cstdlib>
#include <math.h>
#include <mutex>
#include <thread>
#include <functional>
#include <vector>
#include <type_traits>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using cudaStream_t = void*;
struct EmuIdx { unsigned x = 0, y = 0, z = 0; };
inline thread_local EmuIdx threadIdx, blockIdx;
inline dim3 gridDim;

// Cooperative scheduling: the block's threads are ucontext coroutines on one OS thread; a
// barrier wait yields round-robin until every participant has arrived.
#include <ucontext.h>
#include <memory>
inline ucontext_t g_sched_ctx;
inline std::vector<ucontext_t>* g_ctx = nullptr;
inline int g_cur = 0;
inline void emu_yield() { swapcontext(&(*g_ctx)[g_cur], &g_sched_ctx); }
class EmuBarrier {
 public:
  explicit EmuBarrier(int n) : n_(n) {}
  void wait() {
    const long gen = gen_;
    if (++count_ == n_) { count_ = 0; ++gen_; return; }
    long spins = 0;
    while (gen_ == gen) {
      emu_yield();
      if (++spins > 2000000) {
        std::fprintf(stderr, "emulator: barrier never completes (divergent __syncthreads or shuffles)\n");
        std::abort();
      }
    }
  }
 private:
  int n_, count_ = 0; long gen_ = 0;
};
inline EmuBarrier* g_block_bar = nullptr;
inline EmuBarrier* g_warp_bars[64];
inline unsigned char* g_smem = nullptr;
inline int64_t g_shfl[1024];
inline long g_blocks_run = 0;
inline std::mt19937 g_rng(12345);

inline void __syncthreads() { g_block_bar->wait(); }
inline int64_t emu_exchange(int64_t x, int lane_from_xor) {
  const int t = threadIdx.x, w = t / 32;
  g_shfl[t] = x;
  g_warp_bars[w]->wait();
  const int64_t y = g_shfl[w * 32 + ((t % 32) ^ lane_from_xor)];
  g_warp_bars[w]->wait();
  return y;
}
inline float __shfl_xor_sync(unsigned, float x, int off) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const int32_t got = static_cast<int32_t>(emu_exchange(bits, off));
  float y;
  std::memcpy(&y, &got, 4);
  return y;
}
inline long long __shfl_xor_sync(unsigned, long long x, int off) { return emu_exchange(x, off); }
inline long __shfl_xor_sync(unsigned, long x, int off) { return emu_exchange(x, off); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_bars[threadIdx.x / 32]->wait(); }
// Whether pred holds on any lane: every lane publishes, then reads all 32.
inline int __any_sync(unsigned, int pred) {
  const int t = threadIdx.x, w = t / 32;
  g_shfl[t] = pred != 0;
  g_warp_bars[w]->wait();
  int any = 0;
  for (int l = 0; l < 32; ++l) any |= static_cast<int>(g_shfl[w * 32 + l]);
  g_warp_bars[w]->wait();
  return any;
}
int* nvcuda_emu_counts();
inline std::function<void()>* g_body = nullptr;
inline std::vector<char>* g_done = nullptr;
inline void emu_entry() {
  (*g_body)();
  (*g_done)[g_cur] = 1;
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() do {} while (0)
#define C10_CUDA_CHECK(x) do {} while (0)

template <typename... P, typename... A>
void emu_launch(dim3 grid, unsigned threads, size_t smem, void (*kernel)(P...), A... args) {
  std::vector<unsigned char> storage(smem + 256);
  // 128-byte aligned like the device's dynamic shared memory (wmma needs 32-byte aligned tiles).
  unsigned char* base = storage.data() + (128 - reinterpret_cast<uintptr_t>(storage.data()) % 128) % 128;
  gridDim = grid;
  constexpr size_t kStack = 64 * 1024;
  std::vector<std::vector<char>> stacks(threads, std::vector<char>(kStack));
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(base, 0xFF, smem + 16);  // NaN floats and bf16, -1 int64: uninitialised reads show
        g_smem = base;
        EmuBarrier block(threads);
        g_block_bar = &block;
        std::vector<std::unique_ptr<EmuBarrier>> warps;
        for (unsigned w = 0; w < threads / 32; ++w) { warps.emplace_back(new EmuBarrier(32)); g_warp_bars[w] = warps.back().get(); }
        std::fill(nvcuda_emu_counts(), nvcuda_emu_counts() + 1024, 0);
        std::vector<ucontext_t> ctx(threads);
        std::vector<char> done(threads, 0);
        std::function<void()> body = [&] {
          threadIdx = {static_cast<unsigned>(g_cur), 0, 0};
          blockIdx = {x, y, z};
          kernel(args...);
        };
        g_body = &body; g_ctx = &ctx; g_done = &done;
        for (unsigned t = 0; t < threads; ++t) {
          getcontext(&ctx[t]);
          ctx[t].uc_stack.ss_sp = stacks[t].data();
          ctx[t].uc_stack.ss_size = kStack;
          ctx[t].uc_link = &g_sched_ctx;
          makecontext(&ctx[t], emu_entry, 0);
        }
        // Each round visits the threads in a fresh random order (fixed seed), so that a read of
        // shared data that a missing barrier leaves unordered meets stale data in some round.
        std::vector<unsigned> order(threads);
        for (unsigned t = 0; t < threads; ++t) order[t] = t;
        unsigned left = threads;
        while (left > 0) {
          std::shuffle(order.begin(), order.end(), g_rng);
          for (unsigned t : order) {
            if (done[t]) continue;
            g_cur = t;
            threadIdx = {t, 0, 0};
            swapcontext(&g_sched_ctx, &ctx[t]);
            if (done[t]) --left;
          }
        }
        ++g_blocks_run;
      }
}

// ---------------------------------------------------------------------------------------------
// bfloat16 and vector types of the CUDA headers.
using __nv_bfloat16 = c10::BFloat16;
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return c10::BFloat16(x); }  // round to nearest even
inline float __bfloat162float(__nv_bfloat16 x) { return static_cast<float>(x); }
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }

// ---------------------------------------------------------------------------------------------
// nvcuda::wmma, m16n16k16 with bf16 (or half-size) inputs and float accumulators. A fragment
// holds 8 elements a lane; which (row, column) of the 16 x 16 tile each element is, the device
// does not document: here it is a fixed pseudo-random bijection, different for every fragment
// kind (matrix_a / matrix_b in row / column major, accumulator), so that code relying on a
// guessed layout (e.g. indexing x[i] as a row) fails the checks. load/store read and write
// only the calling lane's elements (no barrier: a lane's stores become visible to the other
// lanes only after a __syncwarp, as on the device); mma_sync is a warp exchange through shared
// buffers (one warp barrier, two alternating buffers). Pointers must be 32-byte aligned and
// ldm a multiple of 16 bytes, as the CUDA documentation requires; both are checked.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, typename Layout>
constexpr int emu_kind() {
  if constexpr (std::is_same_v<Use, accumulator>) return 0;
  else if constexpr (std::is_same_v<Use, matrix_a>) return std::is_same_v<Layout, row_major> ? 1 : 2;
  else return std::is_same_v<Layout, row_major> ? 3 : 4;
}
// g_emu_pos[kind][lane * 8 + i] = row * 16 + column of element i of a lane.
struct EmuLayouts {
  int pos[5][256];
  EmuLayouts() {
    std::mt19937 rng(777);
    for (int kind = 0; kind < 5; ++kind) {
      for (int e = 0; e < 256; ++e) pos[kind][e] = e;
      std::shuffle(pos[kind], pos[kind] + 256, rng);
    }
  }
};
inline const EmuLayouts g_emu_layouts;

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has m16n16k16 only");
  static constexpr int num_elements = 8;
  T x[num_elements];
};

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T v) {
  for (int i = 0; i < 8; ++i) f.x[i] = v;
}
inline void emu_check_ptr(const void* ptr, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0 || (ldm * elem) % 16 != 0) {
    std::fprintf(stderr, "emulator: wmma pointer %p not 32-byte aligned or ldm %u not a multiple of 16 bytes\n", ptr, ldm);
    std::abort();
  }
}
// Element (r, c) of the fragment's 16 x 16 tile (a: M x K, b: K x N) in memory.
template <typename Use, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const P* ptr, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  emu_check_ptr(ptr, ldm, sizeof(P));
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < 8; ++i) {
    const int e = g_emu_layouts.pos[emu_kind<Use, Layout>()][lane * 8 + i], r = e / 16, c = e % 16;
    f.x[i] = std::is_same_v<Layout, row_major> ? ptr[r * ldm + c] : ptr[c * ldm + r];
  }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* ptr, unsigned ldm, layout_t l) {
  emu_check_ptr(ptr, ldm, sizeof(float));
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < 8; ++i) {
    const int e = g_emu_layouts.pos[0][lane * 8 + i], r = e / 16, c = e % 16;
    f.x[i] = l == mem_row_major ? ptr[r * ldm + c] : ptr[c * ldm + r];
  }
}
inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  emu_check_ptr(ptr, ldm, sizeof(float));
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < 8; ++i) {
    const int e = g_emu_layouts.pos[0][lane * 8 + i], r = e / 16, c = e % 16;
    (l == mem_row_major ? ptr[r * ldm + c] : ptr[c * ldm + r]) = f.x[i];
  }
}
struct EmuMmaBuf { float a[256], b[256], c[256]; };
inline EmuMmaBuf g_emu_mma[64][2];
inline int g_emu_mma_count[1024];  // per thread, reset at every launch
// d = a b + c over the whole warp: each lane publishes its elements, then computes its own
// elements of d (float products of the bf16 inputs, float sums).
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  const int t = threadIdx.x, w = t / 32, lane = t % 32;
  EmuMmaBuf& buf = g_emu_mma[w][g_emu_mma_count[t]++ % 2];
  for (int i = 0; i < 8; ++i) {
    buf.a[g_emu_layouts.pos[emu_kind<matrix_a, LA>()][lane * 8 + i]] = static_cast<float>(a.x[i]);
    buf.b[g_emu_layouts.pos[emu_kind<matrix_b, LB>()][lane * 8 + i]] = static_cast<float>(b.x[i]);
    buf.c[g_emu_layouts.pos[0][lane * 8 + i]] = c.x[i];
  }
  g_warp_bars[w]->wait();
  // The other buffer is written by the next mma_sync only after every lane passed this barrier,
  // and this one only after the next barrier, when every lane has read it.
  float out[8];
  for (int i = 0; i < 8; ++i) {
    const int e = g_emu_layouts.pos[0][lane * 8 + i], r = e / 16, col = e % 16;
    float s = buf.c[e];
    for (int k = 0; k < 16; ++k) s += buf.a[r * 16 + k] * buf.b[k * 16 + col];
    out[i] = s;
  }
  for (int i = 0; i < 8; ++i) d.x[i] = out[i];
}
}  // namespace nvcuda::wmma
inline int* nvcuda_emu_counts() { return nvcuda::wmma::g_emu_mma_count; }
