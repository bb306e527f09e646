// Host emulation of the CUDA features agate's flash kernels use (tools/flash_cuda_emu/run.sh):
// each block's 256 threads are ucontext coroutines on one OS thread, scheduled in a random
// order every round; __syncthreads is a block barrier, __shfl_xor_sync a per-warp exchange
// between two warp barriers; a barrier that can never complete aborts (divergent barriers).
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
inline float g_shfl[1024];
inline long g_blocks_run = 0;
inline std::mt19937 g_rng(12345);

inline void __syncthreads() { g_block_bar->wait(); }
inline float __shfl_xor_sync(unsigned, float x, int off) {
  const int t = threadIdx.x, w = t / 32;
  g_shfl[t] = x;
  g_warp_bars[w]->wait();
  const float y = g_shfl[w * 32 + ((t % 32) ^ off)];
  g_warp_bars[w]->wait();
  return y;
}
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
  std::vector<unsigned char> buf(smem + 16);
  gridDim = grid;
  constexpr size_t kStack = 64 * 1024;
  std::vector<std::vector<char>> stacks(threads, std::vector<char>(kStack));
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(buf.data(), 0xFF, buf.size());  // NaN floats, -1 int64: uninitialised reads show
        g_smem = buf.data();
        EmuBarrier block(threads);
        g_block_bar = &block;
        std::vector<std::unique_ptr<EmuBarrier>> warps;
        for (unsigned w = 0; w < threads / 32; ++w) { warps.emplace_back(new EmuBarrier(32)); g_warp_bars[w] = warps.back().get(); }
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
