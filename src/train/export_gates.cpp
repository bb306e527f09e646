#include "agate/train/export_gates.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "agate/data/dataset.h"
#include "agate/gate/gates.h"
#include "agate/io/safetensors.h"
#include "agate/model/inspect.h"
#include "agate/model/llama.h"
#include "agate/model/lora.h"
#include "agate/train/checkpoint.h"
#include "agate/train/held_out.h"
#include "agate/train/recipe.h"
#include "agate/train/run_config.h"
#include "agate/train/train_state.h"
#include "agate/util/device.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

bool is_gate_tensor(const std::string& name) { return name.find(".kv_gate.") != std::string::npos; }

// The folder `agate train` ran in, which the run's relative paths (model.path, data.*) are
// relative to: RUN_DIR = that folder / run.dir, so strip run.dir's components off the run
// folder's path. Empty when run.dir is absolute or does not match.
fs::path train_root(const ExportOptions& o, const RunConfig& c) {
  const fs::path written = fs::path(c.run.dir).lexically_normal();
  if (!written.is_relative()) return {};
  fs::path run = fs::weakly_canonical(fs::absolute(o.run_dir));
  std::vector<fs::path> parts(written.begin(), written.end());
  while (!parts.empty() && (parts.back().empty() || parts.back() == ".")) parts.pop_back();
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (*it == "..") return {};
    if (run.filename() != *it) return {};
    run = run.parent_path();
  }
  return run;
}

// A path from the run's recipe: relative ones against the folder the run trained in (when it
// holds them), else as given.
std::string run_path(const ExportOptions& o, const RunConfig& c, const std::string& p) {
  const fs::path root = train_root(o, c);
  if (fs::path(p).is_absolute() || root.empty() || !fs::exists(root / p)) return p;
  return (root / p).lexically_normal().string();
}

// The base model a run trained on: --model when given, else the run's model.path, which is
// relative to the folder `agate train` ran in, not to this one. The weights must have the
// fingerprint the checkpoint recorded.
std::string resolve_base(const ExportOptions& o, const RunConfig& c, const std::string& ckpt, const std::string& want) {
  const std::string cfg = (fs::path(o.run_dir) / "config.resolved.yaml").string();
  std::vector<fs::path> candidates;
  if (!o.model.empty()) {
    candidates.push_back(o.model);
  } else {
    const fs::path p = c.model.path, root = train_root(o, c);
    if (!p.is_absolute() && !root.empty()) candidates.push_back(root / p);
    candidates.push_back(p);
  }
  std::string tried;
  for (const fs::path& c : candidates) {
    if (!fs::exists(c / "config.json")) {
      tried += (tried.empty() ? "" : "; ") + c.string() + " (no model folder)";
      continue;
    }
    const std::string fp = weights_fingerprint(c.string());
    if (want.empty() || fp == want) return fs::absolute(c).lexically_normal().string();
    tried += (tried.empty() ? "" : "; ") + c.string() + " (weights " + fp + ")";
  }
  throw_input(o.model.empty() ? cfg : o.model,
              "no base model with the weights the checkpoint " + ckpt + " was trained on (" + want + "): tried " + tried,
              "pass the base model the run trained on with --model DIR");
}

void write_export(const fs::path& out, const ExportOptions& o, const RunConfig& c, const std::string& ckpt, const TrainState& state,
                  const std::string& base_dir, const ModelConfig& mc, const GateConfig& g, const NamedTensors& gate_t,
                  const NamedTensors& lora_t, const at::Tensor& keep, int64_t measured, double mean_keep) {
  const std::string fingerprint = state.model_fingerprint.empty() ? weights_fingerprint(base_dir) : state.model_fingerprint;
  save_safetensors((out / "gates.safetensors").string(), gate_t,
                   {{"format", "agate-kvgate"}, {"gate_type", kGateTypes.name(g.type)}, {"base_fingerprint", fingerprint}});
  if (!lora_t.empty()) save_safetensors((out / "lora.safetensors").string(), lora_t, {{"format", "pt"}});
  json per_layer = json::array(), per_head = json::array();
  std::string tsv = "layer";
  for (int64_t h = 0; h < mc.num_key_value_heads; ++h) tsv += "\tkv_head_" + std::to_string(h);
  tsv += "\n";
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
    per_layer.push_back(keep[l].mean().item<double>());
    json row = json::array();
    tsv += std::to_string(l);
    for (int64_t h = 0; h < mc.num_key_value_heads; ++h) {
      const double v = keep[l][h].item<double>();
      row.push_back(v);
      char buf[32];
      std::snprintf(buf, sizeof(buf), "\t%.4f", v);
      tsv += buf;
    }
    tsv += "\n";
    per_head.push_back(row);
  }
  json cfg = {{"format", "agate-kvgate"}, {"version", 1}, {"gate", json(g)},
              {"base_model", {{"model_type", mc.model_type}, {"hidden_size", mc.hidden_size},
                              {"num_hidden_layers", mc.num_hidden_layers}, {"num_attention_heads", mc.num_attention_heads},
                              {"num_key_value_heads", mc.num_key_value_heads}, {"head_dim", mc.head_dim},
                              {"vocab_size", mc.vocab_size}, {"weights_fingerprint", fingerprint}, {"path", base_dir}}},
              {"training", {{"run_dir", o.run_dir}, {"checkpoint", ckpt}, {"step", state.step},
                            {"tokens", state.tokens}, {"target_keep", c.loss.target_keep},
                            {"sparsity", kSparsityForms.name(c.loss.sparsity)}, {"lambda", c.loss.lambda},
                            {"data", c.data.train}, {"lora_rank", c.lora.rank}}},
              {"lora", lora_t.empty() ? json(nullptr) : json(c.lora)},
              {"keep_ratio", {{"mean", mean_keep}, {"measured_on_batches", measured}, {"seq_len", c.data.seq_len},
                              {"per_layer", per_layer}, {"per_layer_kv_head", per_head}}}};
  write_file_atomic((out / "kvgate_config.json").string(), cfg.dump(2) + "\n");
  write_file_atomic((out / "head_keep_ratio.tsv").string(), tsv);
  char card[2048];
  std::snprintf(card, sizeof(card),
                "# KV-cache eviction gates (agate)\n\n"
                "Attention-Gates (%s, %lld heads x %lld) for a %s model with %lld layers and %lld KV heads\n"
                "(weights fingerprint %s). They keep %.1f%% of the KV entries on average (measured on %lld\n"
                "validation sequences of %lld tokens; per layer and head in head_keep_ratio.tsv).\n\n"
                "Trained by `agate train` (%s, step %lld, target keep %.2f). Use with the unchanged base model:\n\n"
                "    agate generate --model %s --gates %s --prompt \"...\"\n\n"
                "A backend needs: for each layer, the gate's tensors in gates.safetensors applied to the\n"
                "normalised hidden states that feed q/k/v, keep probability sigmoid(logit), keep iff\n"
                "probability > %.2f (first %lld tokens always kept); evicted entries are dropped from\n"
                "that KV head's cache. See kvgate_config.json.\n",
                kGateTypes.name(g.type), (long long)g.heads, (long long)g.head_dim, mc.model_type.c_str(),
                (long long)mc.num_hidden_layers, (long long)mc.num_key_value_heads, fingerprint.c_str(),
                100 * mean_keep, (long long)measured, (long long)c.data.seq_len, o.run_dir.c_str(),
                (long long)state.step, c.loss.target_keep, base_dir.c_str(), o.out.c_str(),
                g.threshold, (long long)g.sink_tokens);
  write_file_atomic((out / "README.md").string(), card);
}

}  // namespace

double export_gates(const ExportOptions& o) {
  const fs::path run(o.run_dir);
  if (!fs::exists(run / "config.resolved.yaml")) {
    throw_input(o.run_dir, "is not a run folder (no config.resolved.yaml)", "pass the run.dir of an agate train run");
  }
  const RunConfig c = RunConfig::from(Recipe::load((run / "config.resolved.yaml").string()));
  if (!c.has_gates()) {
    throw_input(o.run_dir, std::string("trained no gates (train.mode ") + kTrainModes.name(c.train.mode) + ", gate.type " +
                               kGateTypes.name(c.gate.type) + ")",
                "export a run that trained Attention-Gates");
  }
  std::string ckpt;
  if (o.step >= 0) {
    char name[32];
    std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(o.step));
    ckpt = (run / "checkpoints" / name).string();
    if (!fs::exists(fs::path(ckpt) / "DONE")) throw_input(ckpt, "is not a complete checkpoint", "list RUN_DIR/checkpoints/ for the steps there are");
  } else {
    auto latest = latest_checkpoint(o.run_dir);
    if (!latest) throw_input(o.run_dir, "has no complete checkpoint", "train first (agate train)");
    ckpt = *latest;
  }
  // The output folder: new, empty, or an earlier export; anything else only with --force.
  const fs::path out(o.out);
  const bool out_is_export = fs::exists(out / "kvgate_config.json");
  if (fs::exists(out) && !fs::is_directory(out)) throw_input(o.out, "exists and is not a folder", "choose another --out");
  if (fs::exists(out) && !fs::is_empty(out) && !out_is_export && !o.force) {
    throw_input(o.out, "is not empty and holds no gate export (no kvgate_config.json): export would overwrite its files",
                "choose a new or empty --out, or pass --force");
  }
  CheckpointData data = load_checkpoint(ckpt);
  const TrainState state = TrainState::from_json(data.state_json, (fs::path(ckpt) / "trainer_state.json").string());
  const std::string base_dir = resolve_base(o, c, ckpt, state.model_fingerprint);
  const c10::Device device = resolve_device(o.device, 0, "--device");
  LlamaModel base = LlamaModel::load(base_dir, parse_compute_dtype(c.model.dtype), device);
  const GateConfig& g = c.gate;
  auto gates = Gates::create(g, base.config(), 0, device);
  NamedTensors gate_t, lora_t;
  for (const auto& kv : data.trainable) (is_gate_tensor(kv.first) ? gate_t : lora_t).push_back(kv);
  gates->load(gate_t, ckpt);
  // The keep ratios are measured as the export will be used: with its LoRA applied.
  std::unique_ptr<LoraAdapters> lora;
  if (!lora_t.empty()) {
    lora = std::make_unique<LoraAdapters>(c.lora, base.config(), 0, device);
    lora->load(lora_t, ckpt);
  }

  // Measured keep ratios per layer and KV head on validation (or training) batches: the
  // trainer's held-out measurement, one sequence per forward.
  const std::string data_dir = run_path(o, c, c.data.val.empty() ? c.data.train : c.data.val);
  ForwardOptions fo;
  fo.visibility = gates.get();
  fo.adapter = lora.get();
  HeldOutOptions ho;
  ho.seq_len = c.data.seq_len;
  ho.batch = 1;
  ho.batches = o.batches;
  ho.sft_mode = c.data.sft_mode;
  const HeldOut held = measure_held_out(base, fo, Dataset::open(data_dir), ho);
  const at::Tensor keep = held.keep_by_head.defined()
                              ? held.keep_by_head
                              : at::ones({base.config().num_hidden_layers, base.config().num_key_value_heads}, at::kDouble);
  const double mean_keep = keep.mean().item<double>();

  // Everything is written into a staging folder inside --out, then moved in file by file; a
  // lora.safetensors of an earlier export that this one lacks goes (it would be applied).
  const fs::path stage = out / (".export.tmp." + std::to_string(::getpid()));
  const bool out_existed = fs::exists(out);
  make_dirs(stage.string());
  try {
    write_export(stage, o, c, ckpt, state, base_dir, base.config(), g, gate_t, lora_t, keep, held.batches, mean_keep);
    for (const auto& e : fs::directory_iterator(stage)) fs::rename(e.path(), out / e.path().filename());
    if (lora_t.empty() && out_is_export) fs::remove(out / "lora.safetensors");
    fs::remove_all(stage);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(stage, ec);
    if (!out_existed) fs::remove(out, ec);
    throw;
  }
  return mean_keep;
}

}  // namespace agate
