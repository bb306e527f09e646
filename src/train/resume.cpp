#include "agate/train/resume.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdio>
#include <filesystem>
#include <map>

#include "agate/data/loader.h"
#include "agate/util/checksum.h"
#include "agate/util/error.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

// A resumed state's counters must be its step's: the data cursor and the tokens seen (an
// edited cursor would silently replay or skip data).
void check_counters(const RunConfig& c, const Dataset& train, const TrainState& st, const std::string& where) {
  const int64_t seq_len = c.data.seq_len, global_batch = c.train.global_batch;
  const LoaderCursor want = DataLoader(train, train_loader_options(c), {}).cursor_after(static_cast<uint64_t>(c.run.seed), st.step);
  if (!(st.cursor == want) || st.tokens != st.step * global_batch * seq_len) {
    throw_input(where, "at step " + std::to_string(st.step) + " holds data cursor (epoch " + std::to_string(st.cursor.epoch) +
                           ", sample " + std::to_string(st.cursor.sample) + ") and " + std::to_string(st.tokens) +
                           " tokens, expected (epoch " + std::to_string(want.epoch) + ", sample " + std::to_string(want.sample) +
                           ") and " + std::to_string(st.step * global_batch * seq_len),
                "the checkpoint was edited or damaged: resume from an older one with --resume-from");
  }
}

}  // namespace

std::optional<ResumePoint> find_resume_point(const RunConfig& c, const std::string& run_dir, const ResumeOptions& resume,
                                             const ResumeGuard& guard, const Dataset& train) {
  std::optional<std::string> from;
  if (!resume.resume_from.empty()) from = resume.resume_from;
  else if (!resume.fresh) from = latest_checkpoint(run_dir);
  if (!from) return std::nullopt;
  ResumePoint p;
  p.from = *from;
  p.data = load_checkpoint(*from);
  const std::string where = (fs::path(*from) / "trainer_state.json").string();
  p.state = TrainState::from_json(p.data.state_json, where);
  // The state must belong to its folder and to this run's length (an edited step would
  // otherwise give a negative learning rate or overwrite a newer checkpoint).
  char folder[32];
  std::snprintf(folder, sizeof(folder), "step_%08lld", static_cast<long long>(p.state.step));
  if (fs::path(*from).filename().string() != folder) {
    throw_input(where, "says step " + std::to_string(p.state.step) + " but sits in " + fs::path(*from).filename().string(),
                "the checkpoint was edited or moved: resume from an untouched one with --resume-from");
  }
  if (p.state.step > c.train.steps) {
    throw_input(where, "is at step " + std::to_string(p.state.step) + ", past train.steps (" + std::to_string(c.train.steps) + ")",
                "raise train.steps to continue this run, or start a new one (another run.dir)");
  }
  guard.check(p.state, *from);
  check_counters(c, train, p.state, where);
  return p;
}

TrainState run_state(const Recipe& r, const ResumeGuard& guard, int world_size) {
  TrainState s;
  const std::string yaml = r.to_yaml();
  s.schedule = r.str("optim.schedule");
  s.recipe_fingerprint = hex32(crc32(yaml.data(), yaml.size()));
  s.world_size = world_size;
  s.model_fingerprint = guard.model_fingerprint();
  s.data_fingerprint = guard.data_fingerprint();
  s.resume_keys = guard.resume_keys();
  s.recipe = guard.recipe_values();
  return s;
}

TrainSummary resumed_summary(const TrainState& st) {
  TrainSummary s;
  s.steps = s.resumed_from = st.step;
  s.skipped_steps = st.skipped_steps;
  s.val_base_loss = st.val_base_loss, s.val_loss = st.val_loss, s.keep = st.keep;
  return s;
}

void restore_trainable(const NamedTensors& trainable, const ResumePoint& point) {
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> saved(point.data.trainable.begin(), point.data.trainable.end());
  for (const auto& [name, p] : trainable) {
    auto it = saved.find(name);
    if (it == saved.end() || it->second.sizes() != p.sizes()) throw_input(point.from, "has no matching tensor '" + name + "'");
    if (!at::isfinite(it->second).all().item<bool>()) {
      throw_input(point.from, "trainable tensor '" + name + "' holds NaN/inf",
                  "the checkpoint is damaged: resume from an older one with --resume-from");
    }
    at::Tensor dst = p;
    dst.copy_(it->second);
  }
}

}  // namespace agate
