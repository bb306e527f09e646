#include "agate/data/loader.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "agate/data/dataset.h"
#include "agate/util/error.h"

namespace agate {

namespace {

// SplitMix64: a tiny, fully specified generator, so permutations are identical everywhere.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) without modulo bias (rejection sampling).
  uint64_t below(uint64_t bound) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % bound;
  }
};

struct SampleRef {
  uint32_t shard;
  uint64_t begin;   // first token
  uint64_t length;  // tokens available (== seq_len + 1 for windows, doc length for padded sft)
};

}  // namespace

struct DataLoader::Impl {
  const Dataset& data;
  LoaderOptions opt;
  std::vector<SampleRef> samples;
  int64_t skipped = 0;

  // Consumer state.
  LoaderCursor consumed;

  // Producer state (prefetch thread).
  LoaderCursor produced;
  int64_t perm_epoch = -1;
  std::vector<int64_t> perm;
  std::deque<Batch> queue;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::exception_ptr error;
  std::thread worker;

  Impl(const Dataset& d, LoaderOptions o) : data(d), opt(std::move(o)) {}

  void index_samples() {
    const bool padded = data.is_sft() && opt.sft_mode == SftMode::Pad;
    const uint64_t window = static_cast<uint64_t>(opt.seq_len) + 1;
    for (uint32_t s = 0; s < data.shards().size(); ++s) {
      const Shard& shard = data.shards()[s];
      if (padded) {
        for (uint64_t d = 0; d < shard.num_docs(); ++d) {
          const uint64_t b = shard.doc_offsets()[d], e = shard.doc_offsets()[d + 1];
          if (e - b > window) {
            ++skipped;
            continue;
          }
          samples.push_back({s, b, e - b});
        }
      } else {
        const uint64_t n = shard.num_tokens();
        if (n < window) continue;
        for (uint64_t k = 0; k < (n - 1) / opt.seq_len; ++k) samples.push_back({s, k * opt.seq_len, window});
      }
    }
  }

  void fill(int64_t index, int64_t* tokens, float* mask, float* real) const {
    const SampleRef& r = samples[static_cast<size_t>(index)];
    const Shard& shard = data.shards()[r.shard];
    const uint32_t* t = shard.tokens() + r.begin;
    const uint8_t* m = shard.mask() ? shard.mask() + r.begin : nullptr;
    const int64_t window = opt.seq_len + 1;
    const int64_t pad = data.manifest().space.eos_id >= 0 ? data.manifest().space.eos_id : 0;
    for (int64_t i = 0; i < window; ++i) {
      if (static_cast<uint64_t>(i) < r.length) {
        tokens[i] = t[i];
        mask[i] = m ? static_cast<float>(m[i]) : 1.0f;
        real[i] = 1.0f;
      } else {
        tokens[i] = pad;
        mask[i] = 0.0f;
        real[i] = 0.0f;
      }
    }
  }

  int64_t per_epoch() const { return static_cast<int64_t>(samples.size()) / opt.global_batch; }

  // Builds the batch at cursor `c` for this rank and advances `c`.
  Batch make(LoaderCursor& c) {
    if (c.sample + opt.global_batch > static_cast<int64_t>(samples.size())) {
      c.epoch += 1;
      c.sample = 0;
    }
    if (perm_epoch != c.epoch) {
      perm = permutation(static_cast<int64_t>(samples.size()), c.seed, c.epoch);
      perm_epoch = c.epoch;
    }
    const int64_t local = opt.global_batch / opt.world, window = opt.seq_len + 1;
    Batch b;
    b.tokens = at::empty({local, window}, at::kLong);
    b.mask = at::empty({local, window}, at::kFloat);
    b.real = at::empty({local, window}, at::kFloat);
    int64_t* tp = b.tokens.data_ptr<int64_t>();
    float* mp = b.mask.data_ptr<float>();
    float* rp = b.real.data_ptr<float>();
    for (int64_t i = 0; i < local; ++i) {
      const int64_t id = perm[static_cast<size_t>(c.sample + opt.rank * local + i)];
      b.sample_ids.push_back(id);
      fill(id, tp + i * window, mp + i * window, rp + i * window);
    }
    c.sample += opt.global_batch;
    b.cursor = c;
    return b;
  }

  void run() {
    try {
      while (true) {
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return stop || static_cast<int>(queue.size()) < opt.prefetch; });
          if (stop) return;
        }
        Batch b = make(produced);
        std::lock_guard<std::mutex> lock(mu);
        queue.push_back(std::move(b));
        cv.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      error = std::current_exception();
      cv.notify_all();
    }
  }
};

DataLoader::DataLoader(const Dataset& dataset, LoaderOptions options, LoaderCursor start)
    : impl_(std::make_unique<Impl>(dataset, std::move(options))) {
  const LoaderOptions& o = impl_->opt;
  if (o.seq_len < 1) throw_usage("seq_len must be positive");
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world) throw_usage("bad rank/world for the loader");
  if (o.global_batch < 1 || o.global_batch % o.world != 0) {
    throw_usage("global batch " + std::to_string(o.global_batch) + " is not a multiple of the world size " +
                    std::to_string(o.world),
                "choose a global batch divisible by the number of ranks");
  }
  if (start.epoch < 0 || start.sample < 0) throw_usage("bad loader cursor");
  impl_->index_samples();
  const int64_t n = static_cast<int64_t>(impl_->samples.size());
  if (n == 0) {
    if (dataset.is_sft() && o.sft_mode == SftMode::Pad) {
      throw_input(dataset.dir(), "no SFT document fits seq_len " + std::to_string(o.seq_len) + " (+1) in padding mode",
                  "raise seq_len, truncate documents when tokenizing (--max-len), or use sft pack mode");
    }
    throw_input(dataset.dir(), "holds no complete sample of seq_len + 1 = " + std::to_string(o.seq_len + 1) + " tokens",
                "lower seq_len or add data");
  }
  if (n < o.global_batch) {
    throw_input(dataset.dir(), "has " + std::to_string(n) + " samples, fewer than one global batch of " +
                                   std::to_string(o.global_batch),
                "lower the batch size or seq_len, or add data");
  }
  impl_->consumed = impl_->produced = start;
  if (o.prefetch > 0) impl_->worker = std::thread([this] { impl_->run(); });
}

DataLoader::~DataLoader() {
  if (impl_->worker.joinable()) {
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      impl_->stop = true;
    }
    impl_->cv.notify_all();
    impl_->worker.join();
  }
}

Batch DataLoader::next() {
  Impl& s = *impl_;
  Batch b;
  if (s.opt.prefetch == 0) {
    b = s.make(s.produced);
  } else {
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&] { return !s.queue.empty() || s.error; });
    if (s.error) std::rethrow_exception(s.error);
    b = std::move(s.queue.front());
    s.queue.pop_front();
    s.cv.notify_all();
  }
  s.consumed = b.cursor;
  return b;
}

LoaderCursor DataLoader::cursor() const { return impl_->consumed; }
int64_t DataLoader::num_samples() const { return static_cast<int64_t>(impl_->samples.size()); }
int64_t DataLoader::batches_per_epoch() const { return impl_->per_epoch(); }

LoaderCursor DataLoader::cursor_after(uint64_t seed, int64_t batches) const {
  // make() moves to the next epoch lazily, when the next batch no longer fits: after the last
  // batch of an epoch the cursor still points past it.
  if (batches <= 0) return {seed, 0, 0};
  const int64_t per = impl_->per_epoch();
  return {seed, (batches - 1) / per, ((batches - 1) % per + 1) * impl_->opt.global_batch};
}

int64_t DataLoader::skipped_documents() const { return impl_->skipped; }

void DataLoader::sample(int64_t index, int64_t* tokens, float* mask) const {
  if (index < 0 || index >= num_samples()) throw_usage("sample " + std::to_string(index) + " out of range");
  std::vector<float> real(static_cast<size_t>(impl_->opt.seq_len + 1));
  impl_->fill(index, tokens, mask, real.data());
}

std::vector<int64_t> DataLoader::permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  SplitMix64 rng{seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(epoch) + 0x632BE59BD9B4E019ull)};
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[static_cast<size_t>(i)], p[rng.below(static_cast<uint64_t>(i) + 1)]);
  return p;
}

}  // namespace agate
