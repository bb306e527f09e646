// What a finished training run leaves in its folder: the trained model (pretraining) or
// trainable.safetensors (gates, LoRA), and summary.json.
#pragma once

#include <string>

#include "agate/io/named_tensors.h"
#include "agate/model/llama.h"
#include "agate/train/run_config.h"
#include "agate/train/trainer.h"

namespace agate {

// pretrained: the model to save in pretrain mode (else null: `trainable` is saved).
void save_run_outputs(const std::string& run_dir, const RunConfig& config, const LlamaModel* pretrained,
                      const NamedTensors& trainable, const TrainSummary& summary);

// The summary of a run that had already finished, as on disk: summary.json, or rebuilt from
// metrics.jsonl's last training record when the run died before writing it (`s` holds the
// counters restored from the checkpoint). Sets *had_file to whether summary.json existed.
TrainSummary finished_summary(const std::string& run_dir, TrainSummary s, bool* had_file);

}  // namespace agate
