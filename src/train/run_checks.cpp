#include "agate/train/run_checks.h"

#include <filesystem>
#include <system_error>

#include "agate/io/safetensors.h"
#include "agate/model/inspect.h"
#include "agate/train/checkpoint.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;

namespace agate {

void check_recipe(const Recipe& r) {
  if (r.integer("gate.head_dim") % 2 != 0 && r.str("gate.type") == "attention") {
    r.fail("gate.head_dim", "gate.head_dim must be even, found " + r.str("gate.head_dim"), "RoPE rotates pairs of dimensions");
  }
  if (r.integer("train.micro_batch") > 0 && r.integer("train.global_batch") % r.integer("train.micro_batch") != 0) {
    r.fail("train.micro_batch", "train.micro_batch must divide train.global_batch");
  }
  if (r.str("train.mode") == "gates" && r.str("gate.type") == "none" && r.integer("lora.rank") == 0) {
    r.fail("gate.type", "nothing to train: gate.type is none and lora.rank is 0", "enable gates or LoRA, or use train.mode: pretrain");
  }
  if (r.integer("lora.rank") > 0 && r.list("lora.targets").empty()) {
    r.fail("lora.targets", "lora.rank is " + r.str("lora.rank") + " but lora.targets is empty: no adapter would be made",
           "name the projections, e.g. [q_proj, v_proj], or set lora.rank: 0");
  }
  if (r.number("train.context_min") > r.number("train.context_max")) {
    r.fail("train.context_min", "train.context_min (" + r.str("train.context_min") + ") is above train.context_max (" +
                                    r.str("train.context_max") + ")", "the split's context share is drawn from [context_min, context_max]");
  }
  if (r.str("gate.rule_feature") != "none" && r.number("train.context_min") <= 0) {
    r.fail("gate.rule_feature", "gate.rule_feature " + r.str("gate.rule_feature") +
                                    " needs a context/continuation split: without one the feature would read the attention of the tokens the loss predicts",
           "set train.context_min and train.context_max (e.g. 0.5 and 0.9)");
  }
  if (r.number("loss.target_keep_max") > 0 && r.number("loss.target_keep_max") < r.number("loss.target_keep")) {
    r.fail("loss.target_keep_max", "loss.target_keep_max (" + r.str("loss.target_keep_max") + ") is below loss.target_keep (" +
                                        r.str("loss.target_keep") + ")", "targets are drawn from [target_keep, target_keep_max]; 0 turns it off");
  }
  if (r.str("loss.objective") == "reconstruction") {
    if (r.str("train.mode") != "gates" || r.str("gate.type") == "none") {
      r.fail("loss.objective", "loss.objective reconstruction trains gates: it needs train.mode gates and a gate.type");
    }
    if (r.number("loss.distill") > 0) {
      r.fail("loss.distill", "loss.distill applies to the lm objective, not to reconstruction", "set loss.distill: 0, or loss.objective: lm");
    }
    if (r.boolean("train.recompute")) {
      r.fail("train.recompute", "train.recompute does not combine with loss.objective reconstruction",
             "drop it: reconstruction back-propagates through one layer at a time already");
    }
    // The full-cache target is computed from the same (adapted) q, k, v without a gradient, so
    // an adapter would be trained against a target that moves with it.
    if (r.integer("lora.rank") > 0) {
      r.fail("lora.rank", "loss.objective reconstruction trains gates only, not LoRA adapters",
             "set lora.rank: 0, or loss.objective: lm");
    }
  }
  if (r.integer("model.init_seed") >= 0 && r.str("train.mode") != "pretrain") {
    r.fail("model.init_seed", "model.init_seed (random weights) only makes sense with train.mode: pretrain");
  }
  if (r.str("model.path").empty()) r.fail("model.path", "model.path is empty");
  if (!fs::is_directory(r.str("model.path"))) r.fail("model.path", "model folder '" + r.str("model.path") + "' does not exist", "check model.path");
  if (!fs::exists(fs::path(r.str("model.path")) / "config.json")) {
    r.fail("model.path", "model folder '" + r.str("model.path") + "' has no config.json", "point model.path at a Hugging Face model folder");
  }
  if (!fs::is_directory(r.str("data.train"))) r.fail("data.train", "dataset folder '" + r.str("data.train") + "' does not exist", "create it with agate tokenize");
  if (!r.str("data.val").empty() && !fs::is_directory(r.str("data.val"))) r.fail("data.val", "dataset folder '" + r.str("data.val") + "' does not exist");
  if (r.str("run.dir").empty()) r.fail("run.dir", "run.dir is empty");
  // The output folder: a folder (or creatable), and writable.
  fs::path out = r.str("run.dir");
  if (fs::exists(out) && !fs::is_directory(out)) r.fail("run.dir", "run.dir '" + out.string() + "' exists and is not a folder");
  fs::path probe = fs::absolute(out);
  while (!fs::exists(probe) && probe.has_parent_path() && probe != probe.parent_path()) probe = probe.parent_path();
  if (!can_create_in(probe.string())) {
    r.fail("run.dir", "cannot write into '" + probe.string() + "' (for run.dir '" + out.string() + "')", "choose a writable run.dir");
  }
}

void check_run_folder(const std::string& run_dir, const ResumeOptions& resume) {
  // Step folders without DONE are an earlier run's interrupted checkpoints: starting over would
  // overwrite them, so that takes --force.
  bool has_steps = false;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec))
    has_steps |= e.path().filename().string().rfind("step_", 0) == 0;
  const bool has_run = fs::exists(fs::path(run_dir) / "metrics.jsonl") || has_steps;
  if (resume.fresh && has_run) {
    throw_usage("--fresh: '" + run_dir + "' already holds a run", "choose another run.dir, or drop --fresh to resume it");
  }
  if (!resume.fresh && !resume.force && resume.resume_from.empty() && has_steps && list_checkpoints(run_dir).empty()) {
    throw_input((fs::path(run_dir) / "checkpoints").string(), "holds step folders but no complete checkpoint (no DONE marker): a new run would overwrite them",
                "pass --force to start this run over, or choose another run.dir");
  }
  if (!resume.resume_from.empty() && !fs::exists(fs::path(resume.resume_from) / "DONE")) {
    throw_input(resume.resume_from, "is not a complete checkpoint (no DONE marker)", "pick a folder under RUN_DIR/checkpoints/");
  }
}

// The base model: its weights, or random ones (model.init_seed, pretraining).
LlamaModel load_run_model(const ModelSection& m, c10::Device device) {
  const std::string& dir = m.path;
  const auto dtype = parse_compute_dtype(m.dtype);
  if (m.init_seed >= 0) {
    return LlamaModel::init_random(load_model_config((fs::path(dir) / "config.json").string()),
                                   static_cast<uint64_t>(m.init_seed), dtype, device);
  }
  if (!WeightFolder::present(dir)) {
    throw_input(dir, "holds only config.json, no weights", "--dry-run plans with it; training needs the model's safetensors");
  }
  return LlamaModel::load(dir, dtype, device);
}

RunData open_run_data(const Recipe& r, const ModelConfig& mc) {
  if (r.integer("data.seq_len") > mc.max_position_embeddings) {
    r.fail("data.seq_len", "data.seq_len " + r.str("data.seq_len") + " is above the model's max_position_embeddings (" +
                               std::to_string(mc.max_position_embeddings) + ")",
           "the model has not seen positions that far: lower data.seq_len");
  }
  const std::string train_dir = r.str("data.train");
  if (!fs::exists(fs::path(train_dir) / "manifest.json")) {
    r.fail("data.train", "'" + train_dir + "' is not a dataset folder (no manifest.json)", "create it with agate tokenize (use DIR/train)");
  }
  RunData d{Dataset::open(train_dir), std::nullopt};
  // The ids the data holds, not the tokenizer's size: a tokenizer.json may list added tokens
  // beyond the model's embeddings (SmolLM2's GGUF tokenizer has 5) that the text never uses.
  d.train.check_fits(mc.vocab_size, "data.train");
  check_dataset_tokenizer(d.train.manifest(), train_dir, r.str("model.path"), r.origin("data.train") + ": data.train");
  if (!r.str("data.val").empty()) {
    d.val.emplace(Dataset::open(r.str("data.val")));
    d.val->check_fits(mc.vocab_size, "data.val");
    if (d.val->manifest().space.tokenizer_hash != d.train.manifest().space.tokenizer_hash) {
      r.fail("data.val", "validation data was made with another tokenizer than data.train");
    }
  }
  return d;
}

LoaderOptions train_loader_options(const RunConfig& c, int prefetch) {
  LoaderOptions o;
  o.seq_len = c.data.seq_len;
  o.global_batch = c.train.global_batch;
  o.sft_mode = c.data.sft_mode;
  o.prefetch = prefetch;
  return o;
}

}  // namespace agate
