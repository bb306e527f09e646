// The training loop: gates (+LoRA) on a frozen base, or every weight in pretrain mode.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "agate/train/plan.h"
#include "agate/train/recipe.h"
#include "agate/train/run_checks.h"

namespace agate {

struct TrainSummary {
  int64_t steps = 0;
  double train_loss = 0, val_loss = -1, val_base_loss = -1, keep = 1, tokens_per_s = 0;
  int64_t skipped_steps = 0;
  int64_t resumed_from = -1;  // step of the checkpoint resumed from, -1 if none
  bool preempted = false;     // stopped by SIGTERM/SIGINT after writing a checkpoint
};

class Trainer {
 public:
  // Loads and validates everything the run needs (model weights, data, output folder) before
  // any training work; throws agate::Error with file:line and a hint on bad recipes. (A
  // config-only model folder is planned with plan_recipe instead.)
  explicit Trainer(const Recipe& recipe, ResumeOptions resume = {});
  ~Trainer();
  // plan_run for this run (what --dry-run prints).
  TrainPlan plan() const;
  // Trains up to train.steps, resuming from a checkpoint as ResumeOptions say, validating
  // every eval.every steps, checkpointing every checkpoint.every_steps and at the end; stops
  // early (after a checkpoint) on SIGTERM/SIGINT.
  TrainSummary run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ResumeOptions resume_;
};

}  // namespace agate
