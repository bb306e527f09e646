#include "agate/train/train_state.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "agate/util/error.h"

namespace agate {

using json = nlohmann::json;

std::string TrainState::to_json() const {
  const json j = {
      {"format", "agate-trainer-state"}, {"version", 1}, {"step", step}, {"tokens", tokens},
      {"optimizer_steps", optimizer_steps},
      {"cursor", {{"seed", cursor.seed}, {"epoch", cursor.epoch}, {"sample", cursor.sample}}},
      {"lr_schedule", {{"kind", schedule}, {"position", step}, {"next_lr", next_lr}}},
      {"rng", "none: after initialisation (seeded by run.seed) training draws no random numbers; the data order is the cursor"},
      {"recipe_fingerprint", recipe_fingerprint}, {"world_size", world_size},
      {"model_fingerprint", model_fingerprint}, {"data_fingerprint", data_fingerprint},
      {"resume_keys", resume_keys}, {"recipe", recipe},
      {"window", {{"n", window.good}, {"tokens", window_tokens}, {"loss", window.loss}, {"lm", window.lm},
                  {"sp", window.sparsity}, {"keep", window.keep}, {"grad_norm", window.grad_norm}}},
      {"bad_in_row", window.bad_in_row}, {"skipped_steps", skipped_steps},
      {"val_base_loss", val_base_loss}, {"val_loss", val_loss}, {"keep", keep}};
  return j.dump(2) + "\n";
}

TrainState TrainState::from_json(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw_input(where, std::string("is not valid JSON: ") + e.what(), "the checkpoint is damaged: resume from an older one with --resume-from");
  }
  if (!j.is_object() || j.value("format", "") != "agate-trainer-state") {
    throw_input(where, "is not an agate trainer state", "pass a checkpoint folder written by agate train");
  }
  TrainState s;
  try {
    s.step = j.at("step").get<int64_t>();
    s.tokens = j.at("tokens").get<int64_t>();
    s.optimizer_steps = j.at("optimizer_steps").get<int64_t>();
    s.cursor = {j.at("cursor").at("seed").get<uint64_t>(), j.at("cursor").at("epoch").get<int64_t>(),
                j.at("cursor").at("sample").get<int64_t>()};
    s.schedule = j.at("lr_schedule").value("kind", "");
    s.next_lr = j.at("lr_schedule").value("next_lr", 0.0);
    s.recipe_fingerprint = j.value("recipe_fingerprint", "");
    s.world_size = j.value("world_size", int64_t{1});
    s.model_fingerprint = j.value("model_fingerprint", "");
    s.data_fingerprint = j.value("data_fingerprint", "");
    s.resume_keys = j.at("resume_keys").get<std::map<std::string, std::string>>();
    s.recipe = j.at("recipe").get<std::map<std::string, std::string>>();
    const json& w = j.at("window");
    s.window.good = s.window.steps = w.at("n").get<int64_t>();
    s.window.loss = w.at("loss").get<double>();
    s.window.lm = w.at("lm").get<double>();
    s.window.sparsity = w.at("sp").get<double>();
    s.window.keep = w.at("keep").get<double>();
    s.window.grad_norm = w.value("grad_norm", 0.0);
    s.window.bad_in_row = j.at("bad_in_row").get<int64_t>();
    s.window_tokens = w.at("tokens").get<int64_t>();
    s.skipped_steps = j.at("skipped_steps").get<int64_t>();
    s.val_base_loss = j.at("val_base_loss").get<double>();
    s.val_loss = j.at("val_loss").get<double>();
    s.keep = j.at("keep").get<double>();
  } catch (const json::exception& e) {
    throw_input(where, std::string("lacks a field or holds one of the wrong type (") + e.what() + ")",
                "the checkpoint is damaged: resume from an older one with --resume-from");
  }
  const bool counts_ok = s.step >= 0 && s.tokens >= 0 && s.optimizer_steps >= 0 && s.optimizer_steps <= s.step &&
                         s.cursor.epoch >= 0 && s.cursor.sample >= 0 && s.window.good >= 0 && s.window.bad_in_row >= 0 &&
                         s.window_tokens >= 0 && s.skipped_steps >= 0 && s.world_size >= 1;
  const bool finite = std::isfinite(s.window.loss) && std::isfinite(s.window.lm) && std::isfinite(s.window.sparsity) &&
                      std::isfinite(s.window.keep) && std::isfinite(s.window.grad_norm);
  if (!counts_ok || !finite) {
    throw_input(where, "holds impossible values (step " + std::to_string(s.step) + ", optimizer steps " +
                           std::to_string(s.optimizer_steps) + ", negative counts or a non-finite metric)",
                "the checkpoint was edited or damaged: resume from an older one with --resume-from");
  }
  return s;
}

}  // namespace agate
