// A recipe as typed sections: what the trainer, the planner and the exporter read. The recipe
// (agate/train/recipe.h) checks every key once when it loads (types, choices and ranges declared
// in recipe_schema.cpp); RunConfig::from then turns the checked text into these structs, fixed
// choices into enums (their name tables sit beside the modules that use them, and the schema
// lists its choices from those tables). Cross-key checks are check_recipe's (run_checks.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agate/data/loader.h"
#include "agate/dist/dist.h"
#include "agate/gate/gate_config.h"
#include "agate/gate/losses.h"
#include "agate/model/lora.h"
#include "agate/train/schedule.h"
#include "agate/util/choices.h"

namespace agate {

class Recipe;

enum class TrainMode { Gates, Pretrain };  // train gates (+LoRA) on the frozen base | every weight, no gates
inline constexpr Choices<TrainMode, 2> kTrainModes{{"gates", "pretrain"}};

struct RunSection {
  std::string name, dir;
  int64_t seed = 0;
  int64_t threads = 0;          // 0 = all cores / local ranks
  std::string device = "auto";  // auto | cpu | cuda | cuda:N (resolved per rank)
};

struct ModelSection {
  std::string path;
  std::string dtype = "float32";  // float32 | bfloat16 (parse_compute_dtype)
  int64_t init_seed = -1;         // >= 0: random weights (pretrain mode)
};

struct DataSection {
  std::string train, val;  // dataset folders; val "" = no validation
  int64_t seq_len = 256;
  SftMode sft_mode = SftMode::Pad;
};

struct TrainSection {
  TrainMode mode = TrainMode::Gates;
  int64_t steps = 100, global_batch = 8;
  int64_t micro_batch = 8;  // resolved: train.micro_batch, or the global batch when it is 0
  bool recompute = false;
  int64_t log_every = 10, max_bad_steps = 3;
  double context_min = 0, context_max = 0;  // context/continuation split shares (max 0 = off)
};

struct OptimSection {
  double lr = 1e-3, weight_decay = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, grad_clip = 1;
  ScheduleKind schedule = ScheduleKind::Cosine;
  int64_t warmup_steps = 10;
  double min_lr_ratio = 0.1, decay_fraction = 0.2;
  // The learning-rate schedule of a run of `steps` steps.
  Schedule schedule_for(int64_t steps) const { return {schedule, lr, warmup_steps, steps, min_lr_ratio, decay_fraction}; }
};

struct LossSection {
  SparsityForm sparsity = SparsityForm::L2Target;
  Objective objective = Objective::Lm;
  bool count_window = false;  // the protected window counts in the keep target (window_counted_target)
  double target_keep = 0.5, lambda = 1;
  double target_keep_max = 0;  // randomised targets in [target_keep, target_keep_max] (0 = off)
  int64_t lambda_warmup_steps = 0, target_ramp_steps = 0;
  double distill = 0;
};

struct CheckpointSection {
  int64_t every_steps = 0, keep_last = 2;
};

struct DistSection {
  DistBackend backend = DistBackend::Auto;
  int64_t timeout_s = 300;
  StoreKind store = StoreKind::Tcp;
  std::string store_path;  // file store; "" = RUN_DIR/.store
};

struct EvalSection {
  int64_t every = 50, batches = 8;
};

// What one step trains toward (besides its learning rate, OptimSection::schedule_for).
struct StepTargets {
  double lambda = 0;    // the sparsity weight (loss.lambda after its warm-up)
  double target = 1;    // the keep target: ramped, randomised, the window counted (loss.*)
  int64_t context = 0;  // the context of the step's split (0 = none; train.context_*)
};

struct RunConfig {
  RunSection run;
  ModelSection model;
  GateConfig gate;
  LoraConfig lora;
  DataSection data;
  TrainSection train;
  OptimSection optim;
  LossSection loss;
  CheckpointSection checkpoint;
  DistSection dist;
  EvalSection eval;

  // Every section from a loaded (hence validated) recipe.
  static RunConfig from(const Recipe& recipe);
  // Step `step`'s targets; depend on (run.seed, step) alone, so every rank and a resumed run
  // compute the same.
  StepTargets targets_at(int64_t step) const;
  // Gates are trained: gates mode and a gate type other than none.
  bool has_gates() const { return train.mode == TrainMode::Gates && gate.type != GateType::None; }
};

}  // namespace agate
