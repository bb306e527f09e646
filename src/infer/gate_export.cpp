#include "agate/infer/gate_export.h"

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include "agate/util/logging.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/model/inspect.h"
#include "agate/train/checkpoint.h"
#include "agate/train/recipe_gate.h"
#include "agate/util/device.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

json gate_json(const GateConfig& g) {
  return {{"type", g.type},           {"heads", g.heads},
          {"head_dim", g.head_dim},   {"mlp_hidden", g.mlp_hidden},
          {"threshold", g.threshold}, {"estimator", g.estimator},
          {"sink_tokens", g.sink_tokens}, {"recent_window", g.recent_window}};
}

bool is_gate_tensor(const std::string& name) { return name.find(".kv_gate.") != std::string::npos; }

}  // namespace

double export_gates(const ExportOptions& o) {
  const fs::path run(o.run_dir);
  if (!fs::exists(run / "config.resolved.yaml")) {
    throw_input(o.run_dir, "is not a run folder (no config.resolved.yaml)", "pass the run.dir of an agate train run");
  }
  const Recipe r = Recipe::load((run / "config.resolved.yaml").string());
  if (r.str("train.mode") != "gates" || r.str("gate.type") == "none") {
    throw_input(o.run_dir, "trained no gates (train.mode " + r.str("train.mode") + ", gate.type " + r.str("gate.type") + ")",
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
  CheckpointData data = load_checkpoint(ckpt);
  const json state = json::parse(data.state_json);
  const std::string base_dir = r.str("model.path");
  const c10::Device device = resolve_device(o.device, 0, "--device");
  LlamaModel base = LlamaModel::load(base_dir, parse_compute_dtype(r.str("model.dtype")), device);
  const GateConfig g = gate_config_from(r);
  auto gates = Gates::create(g, base.config(), 0, device);
  NamedTensors gate_t, lora_t;
  for (const auto& kv : data.trainable) (is_gate_tensor(kv.first) ? gate_t : lora_t).push_back(kv);
  gates->load(gate_t, ckpt);

  // Measured keep ratios per layer and KV head on validation (or training) batches.
  at::Tensor keep = at::zeros({base.config().num_hidden_layers, base.config().num_key_value_heads}, at::kDouble);
  int64_t measured = 0;
  {
    c10::NoGradGuard no_grad;
    const std::string data_dir = r.str("data.val").empty() ? r.str("data.train") : r.str("data.val");
    Dataset ds = Dataset::open(data_dir);
    LoaderOptions lo;
    lo.seq_len = r.integer("data.seq_len");
    lo.global_batch = 1;
    lo.sft_mode = r.str("data.sft_mode");
    lo.prefetch = 0;
    DataLoader loader(ds, lo, {12345, 0, 0});
    ForwardOptions fo;
    fo.visibility = gates.get();
    const int64_t n = std::min<int64_t>(o.batches, loader.batches_per_epoch());
    for (int64_t b = 0; b < n; ++b) {
      Batch batch = loader.next();
      gates->reset_stats();
      base.forward(batch.tokens.slice(1, 0, lo.seq_len), fo);
      keep += gates->stats().flags.to(at::kCPU, at::kDouble);
      measured += 1;
    }
    if (measured > 0) keep /= static_cast<double>(measured);
  }
  const double mean_keep = keep.mean().item<double>();

  make_dirs(o.out);
  const fs::path out(o.out);
  const std::string fingerprint = weights_fingerprint(base_dir);
  save_safetensors((out / "gates.safetensors").string(), gate_t,
                   {{"format", "agate-kvgate"}, {"gate_type", g.type}, {"base_fingerprint", fingerprint}});
  if (!lora_t.empty()) save_safetensors((out / "lora.safetensors").string(), lora_t, {{"format", "pt"}});
  const ModelConfig& mc = base.config();
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
  json cfg = {{"format", "agate-kvgate"}, {"version", 1}, {"gate", gate_json(g)},
              {"base_model", {{"model_type", mc.model_type}, {"hidden_size", mc.hidden_size},
                              {"num_hidden_layers", mc.num_hidden_layers}, {"num_attention_heads", mc.num_attention_heads},
                              {"num_key_value_heads", mc.num_key_value_heads}, {"head_dim", mc.head_dim},
                              {"vocab_size", mc.vocab_size}, {"weights_fingerprint", fingerprint}, {"path", base_dir}}},
              {"training", {{"run_dir", o.run_dir}, {"checkpoint", ckpt}, {"step", state.value("step", 0)},
                            {"tokens", state.value("tokens", 0)}, {"target_keep", r.number("loss.target_keep")},
                            {"sparsity", r.str("loss.sparsity")}, {"lambda", r.number("loss.lambda")},
                            {"data", r.str("data.train")}, {"lora_rank", r.integer("lora.rank")}}},
              {"lora", lora_t.empty() ? json(nullptr)
                                      : json{{"rank", r.integer("lora.rank")}, {"alpha", r.number("lora.alpha")},
                                             {"targets", r.list("lora.targets")}}},
              {"keep_ratio", {{"mean", mean_keep}, {"measured_on_batches", measured}, {"seq_len", r.integer("data.seq_len")},
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
                g.type.c_str(), (long long)g.heads, (long long)g.head_dim, mc.model_type.c_str(),
                (long long)mc.num_hidden_layers, (long long)mc.num_key_value_heads, fingerprint.c_str(),
                100 * mean_keep, (long long)measured, (long long)r.integer("data.seq_len"), o.run_dir.c_str(),
                (long long)state.value("step", 0), r.number("loss.target_keep"), base_dir.c_str(), o.out.c_str(),
                g.threshold, (long long)g.sink_tokens);
  write_file_atomic((out / "README.md").string(), card);
  return mean_keep;
}

std::unique_ptr<Gates> load_gate_export(const std::string& dir, const LlamaModel& base, const std::string& base_dir) {
  const std::string cfg_path = (fs::path(dir) / "kvgate_config.json").string();
  if (!fs::exists(cfg_path)) throw_input(dir, "has no kvgate_config.json", "pass a folder written by agate export");
  json cfg;
  try {
    cfg = json::parse(read_file(cfg_path));
  } catch (const json::exception& e) {
    throw_input(cfg_path, std::string("is not valid JSON: ") + e.what());
  }
  if (cfg.value("format", "") != "agate-kvgate" || cfg.value("version", 0) != 1) {
    throw_input(cfg_path, "is not an agate-kvgate version 1 export");
  }
  const json& b = cfg.at("base_model");
  const ModelConfig& mc = base.config();
  auto mismatch = [&](const char* key, int64_t want) {
    if (b.at(key).get<int64_t>() != want) {
      throw_input(dir, std::string("the gates were trained for a base model with ") + key + " = " +
                           std::to_string(b.at(key).get<int64_t>()) + ", this one has " + std::to_string(want),
                  "use the base model the gates were trained on (" + b.value("path", std::string("?")) + ")");
    }
  };
  mismatch("num_hidden_layers", mc.num_hidden_layers);
  mismatch("hidden_size", mc.hidden_size);
  mismatch("num_key_value_heads", mc.num_key_value_heads);
  mismatch("head_dim", mc.head_dim);
  const std::string fp = weights_fingerprint(base_dir);
  if (b.value("weights_fingerprint", "") != fp) {
    throw_input(dir, "the gates were trained on base weights " + b.value("weights_fingerprint", std::string("?")) +
                         ", '" + base_dir + "' has " + fp,
                "same shape but other weights: use the base model the gates were trained on");
  }
  const json& gj = cfg.at("gate");
  GateConfig g;
  g.type = gj.at("type");
  g.heads = gj.at("heads");
  g.head_dim = gj.at("head_dim");
  g.mlp_hidden = gj.at("mlp_hidden");
  g.threshold = gj.at("threshold");
  g.estimator = gj.at("estimator");
  g.sink_tokens = gj.at("sink_tokens");
  g.recent_window = gj.at("recent_window");
  auto gates = Gates::create(g, mc, 0, base.device());
  SafetensorsFile f = SafetensorsFile::open((fs::path(dir) / "gates.safetensors").string());
  NamedTensors t;
  for (const auto& e : f.entries()) t.push_back({e.name, f.float_tensor(e.name)});
  gates->load(t, f.path());
  return gates;
}

std::unique_ptr<LoraAdapters> load_lora_export(const std::string& dir, const LlamaModel& base) {
  const fs::path file = fs::path(dir) / "lora.safetensors";
  if (!fs::exists(file)) return nullptr;
  const std::string cfg_path = (fs::path(dir) / "kvgate_config.json").string();
  const json cfg = json::parse(read_file(cfg_path));
  if (!cfg.contains("lora") || !cfg["lora"].is_object()) {
    throw_input(cfg_path, "has lora.safetensors beside it but no \"lora\" section (an export from before agate 0.1)",
                "re-export the run with agate export");
  }
  LoraConfig lc;
  lc.rank = cfg["lora"].at("rank");
  lc.alpha = cfg["lora"].at("alpha");
  lc.targets = cfg["lora"].at("targets").get<std::vector<std::string>>();
  auto lora = std::make_unique<LoraAdapters>(lc, base.config(), 0, base.device());
  SafetensorsFile f = SafetensorsFile::open(file.string());
  for (const auto& [name, t] : lora->parameters()) {
    if (!f.find(name)) throw_input(file.string(), "lacks tensor " + name, "re-export the run with agate export");
    at::Tensor src = f.float_tensor(name);
    if (src.sizes() != t.sizes()) throw_input(file.string(), "tensor " + name + " has the wrong shape");
    t.detach().copy_(src);
  }
  return lora;
}

}  // namespace agate
