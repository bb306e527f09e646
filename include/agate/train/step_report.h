// The training loop's reports: a log line and a metrics record every train.log_every steps (the
// device-side statistics read once per window), skipped steps, and the stop when
// train.max_bad_steps steps in a row were skipped.
#pragma once

#include <cstdint>

#include "agate/train/metrics_log.h"
#include "agate/train/run_config.h"
#include "agate/train/train_step.h"
#include "agate/train/trainer.h"

namespace agate {

class StepReporter {
 public:
  // start: the first step this process runs; window_tokens: the tokens of the window restored
  // from a checkpoint (0 for a fresh run).
  StepReporter(const RunConfig& config, MetricsLog& metrics, int64_t start, int64_t window_tokens);

  // After step `step` (0-based) ran: counts its tokens, and when a report is due reads the
  // window, logs, records and updates `summary`. Throws when the run is stuck on skipped steps.
  void after_step(int64_t step, double lr, double lambda, StepWindow& window, int64_t tokens_seen, TrainSummary& summary);

  int64_t window_tokens() const { return window_tokens_; }  // for the checkpoint

 private:
  MetricsLog& metrics_;
  int64_t steps_, start_, log_every_, max_bad_, tokens_per_step_;
  bool recon_;  // the objective's main term is the reconstruction error (labelled so)
  int64_t window_tokens_;
  double t_start_, t_window_;
};

}  // namespace agate
