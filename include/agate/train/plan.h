// What a training run will cost, computed before any work (agate train --dry-run): memory per
// device on the blocked attention kernels, and the model FLOPs of a training token.
#pragma once

#include <cstdint>
#include <string>

#include "agate/model/config.h"
#include "agate/train/recipe.h"
#include "agate/train/run_config.h"

namespace agate {

struct TrainPlan {
  int64_t parameters = 0;           // base model
  int64_t trainable = 0;            // gates + LoRA, or everything in pretrain mode
  int64_t gate_parameters = 0;
  int64_t tokens_per_step = 0;      // global batch x seq_len
  int64_t train_samples = 0;
  double weights_mb = 0, optimizer_mb = 0, activations_mb = 0;  // per device (one rank)
  double flops_per_token = 0;       // model FLOPs of one training token (train_flops_per_token)
  std::string device = "cpu";       // the device the estimate is for (run.device)
  std::string describe() const;     // a human-readable table
};

// What plan_run needs besides the run's and the model's config: counted from the built run.
struct PlanCounts {
  int64_t trainable = 0;
  int64_t gate_parameters = 0;
  int64_t train_samples = 0;
};

// The plan of a run from its config, the model's config and the counts; `device` names the
// device the estimate is for.
TrainPlan plan_run(const RunConfig& run, const ModelConfig& model, const PlanCounts& counts, const std::string& device);

// The plan of a recipe without its weights (a config-only model folder is enough, e.g. a 7B
// model's config.json): the recipe's checks, its datasets against the config, and the
// trainable parameters counted on the meta device. run.device may name a GPU this machine
// lacks: the estimate is for that device.
TrainPlan plan_recipe(const Recipe& recipe);

// Model FLOPs of one gate-training token (PaLM-style counting of what the step must compute,
// recomputation not counted): the frozen base's matmuls forward (2 x weights) and backward to
// the inputs only (another 2 x: no weight gradients); attention scores and mixing over the
// whole T x T map forward (4 T H hd per layer) and backward (twice that); the gates forward
// and backward with weight gradients (3 x their forward).
double train_flops_per_token(const ModelConfig& config, const GateConfig& gate, int64_t T);

}  // namespace agate
