// Loss and keep ratios on fixed held-out batches: the trainer's validation and the exporter's
// keep measurement are this one function.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/model/llama.h"

namespace agate {

class ProcessGroup;

struct HeldOutOptions {
  int64_t seq_len = 0;
  int64_t batch = 1;       // sequences per forward
  int64_t batches = 1;     // at most this many (fewer if the dataset has fewer)
  SftMode sft_mode = SftMode::Pad;  // sft datasets
};

struct HeldOut {
  double loss = 0;         // mean LM loss per target token
  double keep = 1;         // mean hard keep flag (1 without a visibility)
  at::Tensor keep_by_head; // [L, Hkv] float64 on the CPU: mean flag per layer and KV head; undefined without a visibility
  int64_t batches = 0;
};

// The first `batches` batches of `data` in a fixed order (the loader's seed 12345, whatever the
// run's seed: the same batches every time), through model.run(tokens, options) under no_grad.
// With a process group the ranks split the batches and the sums are all-reduced.
HeldOut measure_held_out(const LlamaModel& model, const ForwardOptions& options, const Dataset& data,
                         const HeldOutOptions& o, ProcessGroup* pg = nullptr);

}  // namespace agate
