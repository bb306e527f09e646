#include "agate/train/step_report.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

#include "agate/util/error.h"
#include "agate/util/logging.h"
#include "agate/util/timer.h"

namespace agate {

namespace {

std::string eta_text(double seconds) {
  char buf[32];
  const int s = static_cast<int>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%dh%02dm", s / 3600, (s % 3600) / 60);
  else std::snprintf(buf, sizeof(buf), "%dm%02ds", s / 60, s % 60);
  return buf;
}

}  // namespace

StepReporter::StepReporter(const RunConfig& c, MetricsLog& metrics, int64_t start, int64_t window_tokens)
    : metrics_(metrics),
      steps_(c.train.steps),
      start_(start),
      log_every_(c.train.log_every),
      max_bad_(c.train.max_bad_steps),
      tokens_per_step_(c.train.global_batch * c.data.seq_len),
      recon_(c.loss.objective == Objective::Reconstruction),
      window_tokens_(window_tokens),
      t_start_(now_seconds()),
      t_window_(t_start_) {}

void StepReporter::after_step(int64_t step, double lr, double lambda, StepWindow& window, int64_t tokens_seen,
                              TrainSummary& summary) {
  window_tokens_ += tokens_per_step_;
  summary.steps = step + 1;
  const bool log_now = (step + 1) % log_every_ == 0 || step + 1 == steps_;
  if (!log_now && (step + 1 - start_) % max_bad_ != 0) return;
  const StepWindow::Sums w = window.read(/*reset=*/log_now);
  if (w.bad_in_row >= max_bad_) {
    metrics_.record({{"step", step + 1}, {"skipped", w.steps - w.good}, {"bad_in_row", w.bad_in_row}});
    throw_runtime("the loss or gradient was NaN/infinite for " + std::to_string(w.bad_in_row) +
                      " steps in a row (last at step " + std::to_string(step + 1) + "); stopping",
                  "lower optim.lr, check the data, or use model.dtype: float32; no checkpoint holds non-finite values");
  }
  if (!log_now) return;
  if (w.steps > w.good) {
    summary.skipped_steps += w.steps - w.good;
    log::warn("steps {}-{}: {} step(s) skipped for a non-finite loss or gradient ({} in a row now)", step + 2 - w.steps,
              step + 1, w.steps - w.good, w.bad_in_row);
    metrics_.record({{"step", step + 1}, {"skipped", w.steps - w.good}, {"bad_in_row", w.bad_in_row}});
  }
  if (w.good > 0) {
    const double n = static_cast<double>(w.good);
    const double now = now_seconds(), tps = window_tokens_ / std::max(now - t_window_, 1e-9);
    const double eta = (now - t_start_) / static_cast<double>(step + 1 - start_) * static_cast<double>(steps_ - step - 1);
    log::info("step {}/{} | loss {:.4f} ({} {:.4f} + sparsity {:.4f}) | keep {:.3f} | lr {:.2e} | {:.0f} tok/s | ETA {}",
              step + 1, steps_, w.loss / n, recon_ ? "recon" : "lm", w.lm / n, w.sparsity / n, w.keep / n, lr, tps, eta_text(eta));
    metrics_.record({{"step", step + 1}, {"loss", w.loss / n}, {recon_ ? "recon_error" : "lm_loss", w.lm / n}, {"sparsity", w.sparsity / n},
                     {"keep", w.keep / n}, {"lr", lr}, {"lambda", lambda}, {"grad_norm", w.grad_norm},
                     {"tokens_per_s", tps}, {"tokens", tokens_seen}});
    summary.train_loss = w.loss / n;
    summary.keep = w.keep / n;
    summary.tokens_per_s = tps;
  }
  t_window_ = now_seconds(), window_tokens_ = 0;
}

}  // namespace agate
