// The training loop: gates (+LoRA) on a frozen base, or every weight in pretrain mode.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "agate/train/recipe.h"

namespace agate {

// What a run will cost, computed before any work (agate train --dry-run).
struct TrainPlan {
  int64_t parameters = 0;           // base model
  int64_t trainable = 0;            // gates + LoRA, or everything in pretrain mode
  int64_t gate_parameters = 0;
  int64_t tokens_per_step = 0;      // global batch x seq_len
  int64_t train_samples = 0;
  double weights_mb = 0, optimizer_mb = 0, activations_mb = 0;  // per device (one rank)
  std::string device = "cpu";       // the device the estimate is for (run.device)
  std::string describe() const;     // a human-readable table
};

struct ResumeOptions {
  bool fresh = false;        // refuse to touch a run folder that already holds a run
  std::string resume_from;   // a checkpoint folder; empty = the newest complete one, if any
  bool force = false;        // start over in a run folder whose checkpoints are all incomplete
};

struct TrainSummary {
  int64_t steps = 0;
  double train_loss = 0, val_loss = -1, val_base_loss = -1, keep = 1, tokens_per_s = 0;
  int64_t skipped_steps = 0;
  int64_t resumed_from = -1;  // step of the checkpoint resumed from, -1 if none
  bool preempted = false;     // stopped by SIGTERM/SIGINT after writing a checkpoint
};

class Trainer {
 public:
  // Loads and validates everything the run needs (model, data, output folder) before any
  // training work; throws agate::Error with file:line and a hint on bad recipes.
  // plan_only (--dry-run): a model folder with config.json but no weights is enough for plan().
  explicit Trainer(const Recipe& recipe, ResumeOptions resume = {}, bool plan_only = false);
  ~Trainer();

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
