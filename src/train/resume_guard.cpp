#include "agate/train/resume_guard.h"

#include <filesystem>

#include "agate/model/inspect.h"
#include "agate/train/recipe.h"
#include "agate/train/train_state.h"
#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/logging.h"

namespace fs = std::filesystem;

namespace agate {

ResumeGuard::ResumeGuard(const Recipe& recipe) : r_(recipe) {}

const std::vector<std::string>& ResumeGuard::breaking_keys() {
  static const std::vector<std::string> k = {"model.init_seed", "gate.type", "gate.heads", "gate.head_dim",
                                             "gate.mlp_hidden", "gate.rule_feature", "lora.rank", "lora.targets", "train.mode",
                                             "data.seq_len", "data.sft_mode", "train.global_batch", "run.seed"};
  return k;
}

std::string ResumeGuard::key_value(const std::string& key) const {
  for (const auto& s : recipe_schema()) {
    if (s.path != key) continue;
    if (s.type != "list") return r_.str(key);
    std::string out;
    for (const auto& i : r_.list(key)) out += (out.empty() ? "" : ",") + i;
    return "[" + out + "]";
  }
  return "";
}

std::string ResumeGuard::model_fingerprint() const {
  if (!model_fp_.empty()) return model_fp_;
  const std::string dir = r_.str("model.path");
  if (r_.integer("model.init_seed") >= 0) {
    const std::string cfg = read_file((fs::path(dir) / "config.json").string());
    model_fp_ = hex32(crc32(cfg.data(), cfg.size()));
  } else {
    model_fp_ = weights_fingerprint(dir);
  }
  return model_fp_;
}

std::string ResumeGuard::data_fingerprint() const {
  const std::string m = read_file((fs::path(r_.str("data.train")) / "manifest.json").string());
  return hex32(crc32(m.data(), m.size()));
}

std::map<std::string, std::string> ResumeGuard::resume_keys() const {
  std::map<std::string, std::string> keys;
  for (const auto& k : breaking_keys()) keys[k] = key_value(k);
  return keys;
}

std::map<std::string, std::string> ResumeGuard::recipe_values() const {
  std::map<std::string, std::string> rec;
  for (const auto& k : recipe_schema()) rec[k.path] = key_value(k.path);
  return rec;
}

void ResumeGuard::check(const TrainState& st, const std::string& where) const {
  std::vector<std::string> changes;
  if (st.model_fingerprint != model_fingerprint()) changes.push_back("the base model (model.path weights or config)");
  if (st.data_fingerprint != data_fingerprint()) changes.push_back("the training data (data.train)");
  for (const auto& k : breaking_keys()) {
    const auto it = st.resume_keys.find(k);
    const std::string now = key_value(k), then = it == st.resume_keys.end() ? "?" : it->second;
    if (now != then) changes.push_back(k + " (" + then + " -> " + now + ")");
  }
  if (!changes.empty()) {
    std::string list;
    for (const auto& c : changes) list += (list.empty() ? "" : ", ") + c;
    throw_input(where, "cannot resume: the recipe changed " + list,
                "restore the old values, or start a new run (another run.dir, or --fresh on an empty one)");
  }
  for (const auto& [key, then] : st.recipe) {
    if (key_value(key) != then) log::info("resume: {} changed from '{}' to '{}' (allowed)", key, then, key_value(key));
  }
}

}  // namespace agate
