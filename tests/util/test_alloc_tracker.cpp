// The CPU allocation tracker: counts tensor storage allocated in its scope, frees included,
// and puts LibTorch's allocator back afterwards.
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "agate/util/alloc_tracker.h"

namespace agate {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(AllocTracker, PeakCurrentAndRestore) {
  c10::Allocator* before = c10::GetCPUAllocator();
  EXPECT_FALSE(AllocTracker::active());
  {
    AllocTracker tracker;
    EXPECT_TRUE(AllocTracker::active());
    EXPECT_NE(c10::GetCPUAllocator(), before);
    AllocTracker::reset_peak();
    const int64_t base = AllocTracker::current_bytes();
    const int64_t peak0 = AllocTracker::peak_bytes();
    int64_t with = 0;
    {
      at::Tensor x = at::empty({64 * kMiB}, at::kByte);
      x.fill_(1);  // the memory is real and usable
      EXPECT_EQ(x.sum().item<int64_t>(), 64 * kMiB);
      with = AllocTracker::current_bytes();
      EXPECT_GE(with - base, 64 * kMiB);
      EXPECT_GE(AllocTracker::peak_bytes() - peak0, 64 * kMiB);
    }
    EXPECT_LT(AllocTracker::current_bytes(), with);
    EXPECT_EQ(AllocTracker::current_bytes(), base);
    EXPECT_GE(AllocTracker::peak_bytes() - peak0, 64 * kMiB);  // the peak stays until reset
    AllocTracker::reset_peak();
    EXPECT_EQ(AllocTracker::peak_bytes(), AllocTracker::current_bytes());
  }
  EXPECT_EQ(c10::GetCPUAllocator(), before);
  EXPECT_FALSE(AllocTracker::active());
}

// Raw allocations (c10::Allocator::raw_allocate, which oneDNN's matmul uses for its buffers)
// work under the tracker and are counted; a bfloat16 batched matmul through oneDNN runs without
// falling back (it used to print a failed-assertion warning and take a slower kernel).
TEST(AllocTracker, RawAllocationsWorkAndAreCounted) {
  AllocTracker tracker;
  const int64_t base = AllocTracker::current_bytes();
  c10::Allocator* a = c10::GetCPUAllocator();
  void* p = a->raw_allocate(kMiB);
  ASSERT_NE(p, nullptr);
  static_cast<char*>(p)[kMiB - 1] = 1;
  EXPECT_EQ(AllocTracker::current_bytes() - base, kMiB);
  a->raw_deallocate(p);
  EXPECT_EQ(AllocTracker::current_bytes(), base);
  const at::Tensor x = at::randn({4, 64, 32}).to(at::kBFloat16);
  const at::Tensor y = at::matmul(x, x.transpose(1, 2));
  EXPECT_TRUE(at::allclose(y.to(at::kFloat), at::matmul(x.to(at::kFloat), x.to(at::kFloat).transpose(1, 2)), 0.05, 0.5));
}

TEST(AllocTracker, FreesAfterTheScopeAndNestedScopes) {
  c10::Allocator* before = c10::GetCPUAllocator();
  at::Tensor kept;
  int64_t base = 0;
  {
    AllocTracker outer;
    base = AllocTracker::current_bytes();
    {
      AllocTracker inner;  // nested: no-op, the outer one stays in charge
      kept = at::ones({4 * kMiB}, at::kByte);
    }
    EXPECT_TRUE(AllocTracker::active());
    EXPECT_GE(AllocTracker::current_bytes() - base, 4 * kMiB);
  }
  EXPECT_EQ(c10::GetCPUAllocator(), before);
  // A storage made under the tracker can still grow and be freed after it (the wrapper lives on).
  kept.resize_({8 * kMiB});
  kept.fill_(2);
  EXPECT_EQ(kept.sum().item<int64_t>(), 16 * kMiB);
  kept.reset();
  EXPECT_EQ(AllocTracker::current_bytes(), base);
}

TEST(AllocTracker, CountsAcrossThreads) {
  AllocTracker tracker;
  const int64_t base = AllocTracker::current_bytes();
  AllocTracker::reset_peak();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([] {
      for (int i = 0; i < 200; ++i) {
        at::Tensor x = at::empty({kMiB / 8 + i}, at::kByte);
        x.fill_(0);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(AllocTracker::current_bytes(), base);
  EXPECT_GE(AllocTracker::peak_bytes() - base, kMiB / 8);
  EXPECT_LE(AllocTracker::peak_bytes() - base, 4 * (kMiB / 8 + 200));
}

}  // namespace
}  // namespace agate
