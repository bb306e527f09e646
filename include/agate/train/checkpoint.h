// Checkpoints in a run folder: run_dir/checkpoints/step_NNNNNNNN/ with
//   trainable.safetensors   gates + LoRA (or every weight in pretrain mode), float32
//   optimizer.safetensors   AdamW state ("<param>.exp_avg", "<param>.exp_avg_sq")
//   trainer_state.json      step, tokens, loader cursor, optimizer steps, world size, the
//                           fingerprints resume compares, metric accumulators
//   DONE                    written last: a folder without it is never loaded
// A checkpoint is written into checkpoints/.tmp_step_N/, every file fsynced, renamed to
// step_N, and only then marked DONE; older complete checkpoints beyond keep_last are pruned
// after that, so an interrupted write never costs the previous checkpoint.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agate/io/named_tensors.h"

namespace agate {

struct CheckpointData {
  NamedTensors trainable;
  NamedTensors optimizer;
  std::string state_json;  // trainer_state.json contents
};

// Writes checkpoint `step` and prunes to keep_last (>= 1) complete checkpoints. Returns its path.
std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointData& data, int64_t keep_last);

// Complete checkpoints (with DONE), oldest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// Reads a complete checkpoint folder (tensors are copied into memory the caller owns).
CheckpointData load_checkpoint(const std::string& dir);

}  // namespace agate
