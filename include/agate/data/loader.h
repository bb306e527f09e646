// Streaming loader: fixed-length samples from a Dataset, in a seeded global order, sliced
// across ranks, prefetched on a background thread, resumable from a three-number cursor.
//
// Samples (each seq_len + 1 tokens, so inputs = [:-1] and targets = [1:]):
//   cpt, and sft with pack: windows k*seq_len .. k*seq_len + seq_len (inclusive) inside each
//     shard (consecutive windows share one token; a shard's tail shorter than a window is
//     not used);
//   sft with pad: one document per sample, padded with EOS (mask 0); documents longer than
//     seq_len + 1 tokens are skipped (counted in skipped_documents()).
// Order: epoch e visits all samples in a permutation seeded by (seed, e). Global batch g of
//   an epoch is permutation[g*G, (g+1)*G); rank r of W takes its r-th slice of G/W samples.
//   The tail of an epoch smaller than G is dropped. So the cursor (seed, epoch, sample) is
//   the whole state, and a different W with the same G sees the same global batches.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agate/util/choices.h"

namespace agate {

class Dataset;

struct LoaderCursor {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t sample = 0;  // index into the epoch's permutation of the next global batch
  bool operator==(const LoaderCursor& o) const { return seed == o.seed && epoch == o.epoch && sample == o.sample; }
};

// SFT datasets: one document per sample, padded (pad), or documents packed into windows (pack).
enum class SftMode { Pad, Pack };
inline constexpr Choices<SftMode, 2> kSftModes{{"pad", "pack"}};

struct LoaderOptions {
  int64_t seq_len = 256;
  int64_t global_batch = 8;  // samples per optimizer step, over all ranks
  int rank = 0;
  int world = 1;
  SftMode sft_mode = SftMode::Pad;  // sft datasets only
  int prefetch = 4;              // batches prepared ahead (0 = synchronous)
};

struct Batch {
  at::Tensor tokens;    // [G/W, seq_len + 1] int64
  at::Tensor mask;      // [G/W, seq_len + 1] float32: 1 where the token is a loss target
  at::Tensor real;      // [G/W, seq_len + 1] float32: 1 for the sample's own tokens (prompt too), 0 for padding
  LoaderCursor cursor;  // the cursor after this batch (what a checkpoint stores)
  std::vector<int64_t> sample_ids;  // the samples (indices before permutation) in this batch
};

class DataLoader {
 public:
  DataLoader(const Dataset& dataset, LoaderOptions options, LoaderCursor start);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  Batch next();
  // Cursor after the last batch next() returned (or the start cursor).
  LoaderCursor cursor() const;

  int64_t num_samples() const;
  int64_t batches_per_epoch() const;
  // Where a loader started at {seed, 0, 0} stands after `batches` global batches (what a
  // checkpoint of step `batches` must hold; the trainer checks a resumed state against it).
  LoaderCursor cursor_after(uint64_t seed, int64_t batches) const;
  int64_t skipped_documents() const;

  // The permutation of epoch `epoch` for `seed` (exposed for tests and `agate data show`).
  static std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch);

  // Sample `index` (before permutation): tokens and mask, seq_len + 1 each.
  void sample(int64_t index, int64_t* tokens, float* mask) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace agate
