// A checkpoint's trainer state (trainer_state.json): everything besides the tensors that a
// resumed run needs to continue exactly where the interrupted one stopped. One mapping to and
// from JSON, with the checks a hand-edited or damaged file must pass.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "agate/data/loader.h"
#include "agate/train/train_step.h"

namespace agate {

struct TrainState {
  int64_t step = 0;             // optimizer steps done (the checkpoint folder is step_%08d)
  int64_t tokens = 0;           // tokens seen
  int64_t optimizer_steps = 0;  // the optimizer's largest per-parameter step count
  LoaderCursor cursor;          // the data position after `step`
  std::string schedule;         // optim.schedule, and its next learning rate (for reading)
  double next_lr = 0;
  std::string recipe_fingerprint, model_fingerprint, data_fingerprint;
  int64_t world_size = 1;
  std::map<std::string, std::string> resume_keys;  // the breaking keys' values (ResumeGuard)
  std::map<std::string, std::string> recipe;       // every key's value
  StepWindow::Sums window;      // the metric window since the last log line
  int64_t window_tokens = 0;
  int64_t skipped_steps = 0;
  double val_base_loss = 0, val_loss = 0, keep = 0;

  std::string to_json() const;
  // Parses `text`; refuses (naming `where`) a file that is not a trainer state, lacks a field,
  // or holds impossible values (negative counts, a NaN in the metric window).
  static TrainState from_json(const std::string& text, const std::string& where);
};

}  // namespace agate
