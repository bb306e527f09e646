#include "agate/train/run_outputs.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>

#include "agate/io/safetensors.h"
#include "agate/util/fs.h"
#include "agate/util/logging.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

void save_run_outputs(const std::string& run_dir, const RunConfig& c, const LlamaModel* pretrained,
                      const NamedTensors& trainable, const TrainSummary& s) {
  if (pretrained) {
    pretrained->save((fs::path(run_dir) / "model").string());
    log::info("saved the trained model to {}/model", run_dir);
  } else {
    std::map<std::string, std::string> meta{{"gate_type", kGateTypes.name(c.gate.type)}, {"lora_rank", std::to_string(c.lora.rank)}};
    save_safetensors((fs::path(run_dir) / "trainable.safetensors").string(), trainable, meta);
    log::info("saved {} trainable tensors to {}/trainable.safetensors", trainable.size(), run_dir);
  }
  json j = {{"steps", s.steps}, {"train_loss", s.train_loss}, {"val_loss", s.val_loss},
            {"val_base_loss", s.val_base_loss}, {"keep", s.keep}, {"tokens_per_s", s.tokens_per_s},
            {"skipped_steps", s.skipped_steps}};
  write_file_atomic((fs::path(run_dir) / "summary.json").string(), j.dump(2) + "\n");
}

TrainSummary finished_summary(const std::string& run_dir, TrainSummary s, bool* had_file) {
  const fs::path path = fs::path(run_dir) / "summary.json";
  *had_file = fs::exists(path);
  json prev;
  try {
    prev = json::parse(read_file(path.string()));
  } catch (const std::exception&) {  // absent or damaged
    std::ifstream in((fs::path(run_dir) / "metrics.jsonl").string());
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("loss")) prev = {{"train_loss", j["loss"]}, {"tokens_per_s", j.value("tokens_per_s", 0.0)}};
    }
  }
  if (prev.is_object()) {
    s.train_loss = prev.value("train_loss", 0.0);
    s.tokens_per_s = prev.value("tokens_per_s", 0.0);
  }
  return s;
}

}  // namespace agate
