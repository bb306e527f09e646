#include "agate/util/alloc_tracker.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <mutex>
#include <unordered_map>

#include "agate/util/error.h"

namespace agate {

namespace {

std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_count{0};

void raise_peak(int64_t now) {
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

// A counted allocation: the original one (its deleter frees it) and its size, found by its data
// pointer. The DataPtr's context is the data pointer itself, as c10::Allocator::raw_allocate
// requires (oneDNN's matmul allocates its scratch that way; with any other context it fails
// and falls back to a slower kernel).
struct Counted {
  c10::DataPtr inner;
  int64_t bytes;
};

std::mutex g_mu;
std::unordered_map<void*, Counted*>& live() {
  static auto* m = new std::unordered_map<void*, Counted*>();  // never destroyed: late frees
  return *m;
}

void counted_delete(void* data) {
  Counted* c = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = live().find(data);
    if (it == live().end()) return;
    c = it->second;
    live().erase(it);
  }
  g_current.fetch_sub(c->bytes, std::memory_order_relaxed);
  delete c;  // runs the original deleter
}

class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    c10::Allocator* inner = inner_.load(std::memory_order_acquire);
    c10::DataPtr p = inner->allocate(n);
    void* data = p.get();
    if (data == nullptr) return p;  // an empty allocation: nothing to count, no key to file it under
    const c10::Device device = p.device();
    auto* ctx = new Counted{std::move(p), static_cast<int64_t>(n)};
    {
      std::lock_guard<std::mutex> lock(g_mu);
      live()[data] = ctx;
    }
    g_count.fetch_add(1, std::memory_order_relaxed);
    raise_peak(g_current.fetch_add(ctx->bytes, std::memory_order_relaxed) + ctx->bytes);
    return {data, data, &counted_delete, device};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counted_delete; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    inner_.load(std::memory_order_acquire)->copy_data(dest, src, count);
  }
  // The allocator to forward to: set at each install and kept afterwards, so storages created
  // under the wrapper (which remember it) can still grow after the scope has ended.
  std::atomic<c10::Allocator*> inner_{nullptr};
};

CountingAllocator& wrapper() {
  static auto* w = new CountingAllocator();  // never destroyed: late frees and resizes use it
  return *w;
}

}  // namespace

AllocTracker::AllocTracker(uint8_t priority) : priority_(priority) {
  c10::Allocator* current = c10::GetCPUAllocator();
  if (current == &wrapper()) return;  // nested
  wrapper().inner_.store(current, std::memory_order_release);
  c10::SetCPUAllocator(&wrapper(), priority);
  if (c10::GetCPUAllocator() != &wrapper()) {
    throw_runtime("the allocation tracker could not install its CPU allocator",
                  "an allocator with a higher priority is installed; pass a higher priority");
  }
  previous_ = current;
}

AllocTracker::~AllocTracker() {
  if (previous_) c10::SetCPUAllocator(static_cast<c10::Allocator*>(previous_), priority_);
}

int64_t AllocTracker::current_bytes() { return g_current.load(std::memory_order_relaxed); }
int64_t AllocTracker::peak_bytes() { return g_peak.load(std::memory_order_relaxed); }
void AllocTracker::reset_peak() { g_peak.store(g_current.load(std::memory_order_relaxed), std::memory_order_relaxed); }
int64_t AllocTracker::allocations() { return g_count.load(std::memory_order_relaxed); }
bool AllocTracker::active() { return c10::GetCPUAllocator() == &wrapper(); }

}  // namespace agate
