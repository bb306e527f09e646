// Where a training run starts: an explicit checkpoint, the newest complete one, or the
// beginning; a checkpoint is checked against the run before anything is restored from it.
#pragma once

#include <optional>
#include <string>

#include "agate/data/dataset.h"
#include "agate/io/named_tensors.h"
#include "agate/train/checkpoint.h"
#include "agate/train/recipe.h"
#include "agate/train/run_config.h"
#include "agate/train/resume_guard.h"
#include "agate/train/run_checks.h"
#include "agate/train/train_state.h"
#include "agate/train/trainer.h"

namespace agate {

struct ResumePoint {
  std::string from;     // the checkpoint folder
  CheckpointData data;  // its tensors and trainer_state.json
  TrainState state;     // parsed and checked
};

// The checkpoint to resume (--resume-from, else the newest complete one unless --fresh), or
// none. Refuses a state that does not belong to its folder or to this run: a step past
// train.steps, breaking recipe changes (the guard), a data cursor or token count that is not
// its step's (`train`: the run's training data).
std::optional<ResumePoint> find_resume_point(const RunConfig& config, const std::string& run_dir, const ResumeOptions& resume,
                                             const ResumeGuard& guard, const Dataset& train);

// A checkpoint state with what identifies the run filled in (schedule, fingerprints, the
// recipe's keys, world size); the caller sets the counters.
TrainState run_state(const Recipe& recipe, const ResumeGuard& guard, int world_size);

// Copies the checkpoint's trainable tensors into `trainable` (no_grad); refuses a missing,
// mis-shaped or non-finite one, naming it.
// The run summary as a resumed state left it (steps, skipped steps, losses, keep).
TrainSummary resumed_summary(const TrainState& state);

void restore_trainable(const NamedTensors& trainable, const ResumePoint& point);

}  // namespace agate
