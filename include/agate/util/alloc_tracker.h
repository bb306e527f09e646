// Peak CPU tensor memory: a counting wrapper around LibTorch's CPU allocator.
#pragma once

#include <cstdint>

namespace agate {

// While an AllocTracker lives, LibTorch's CPU allocator (c10::GetCPUAllocator(), which the
// storage of every CPU tensor comes from) is a counting wrapper around the allocator that was
// installed before it; the destructor reinstalls that one. Each allocation is forwarded to the
// original and its DataPtr wrapped, so the original's deleter still frees it and the free is
// counted, also when it happens after the scope has ended (the wrapper is never destroyed).
//
// What is counted: tensor storage (requested bytes) and raw buffers (c10::Allocator::raw_allocate,
// e.g. oneDNN's matmul scratch) allocated through the wrapper and not yet freed. Not counted:
// memory that bypasses LibTorch's allocator (BLAS's own scratch, std containers, the OpenMP runtime), tensors allocated before the scope (their frees are not
// subtracted either), CUDA memory.
//
// The counters are process-wide atomics (safe with intra-op threads and concurrent frees).
// Construct and destroy trackers while no other thread is allocating (LibTorch's allocator
// registry is a plain array). Nested trackers are no-ops: the outermost one installs and
// restores. `priority` is passed to c10::SetCPUAllocator for the install and the restore; the
// constructor throws a runtime error if a higher-priority allocator refused the install.
class AllocTracker {
 public:
  explicit AllocTracker(uint8_t priority = 0);
  ~AllocTracker();
  AllocTracker(const AllocTracker&) = delete;
  AllocTracker& operator=(const AllocTracker&) = delete;

  // Bytes counted and not yet freed.
  static int64_t current_bytes();
  // The highest current_bytes() since the last reset_peak() (or since the start).
  static int64_t peak_bytes();
  // peak := current.
  static void reset_peak();
  // Allocations counted so far (all time).
  static int64_t allocations();
  // Whether the counting wrapper is the CPU allocator now.
  static bool active();

 private:
  void* previous_ = nullptr;  // the c10::Allocator this scope replaced; null for a nested scope
  uint8_t priority_ = 0;
};

}  // namespace agate
