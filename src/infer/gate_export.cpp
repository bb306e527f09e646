#include "agate/infer/gate_export.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "agate/io/safetensors.h"
#include "agate/model/inspect.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

json read_export_config(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "kvgate_config.json").string();
  if (!fs::is_directory(dir)) throw_input(dir, "is not a folder", "pass a folder written by agate export");
  if (!fs::exists(cfg_path)) throw_input(dir, "has no kvgate_config.json", "pass a folder written by agate export");
  json cfg;
  try {
    cfg = json::parse(read_file(cfg_path));
  } catch (const json::exception& e) {
    throw_input(cfg_path, std::string("is not valid JSON: ") + e.what());
  }
  if (!cfg.is_object() || cfg.value("format", "") != "agate-kvgate" || cfg.value("version", 0) != 1) {
    throw_input(cfg_path, "is not an agate-kvgate version 1 export");
  }
  return cfg;
}

// Every value read from an export must be finite (a damaged file would flag or shift garbage).
NamedTensors read_float_tensors(const std::string& path) {
  SafetensorsFile f = SafetensorsFile::open(path);
  NamedTensors t;
  for (const auto& e : f.entries()) {
    t.push_back({e.name, f.float_tensor(e.name)});
    if (!at::isfinite(t.back().second).all().item<bool>()) {
      throw_input(path, "tensor '" + e.name + "' holds NaN/inf", "the export is damaged: export the run again");
    }
  }
  return t;
}

}  // namespace

std::unique_ptr<Gates> load_gate_export(const std::string& dir, const LlamaModel& base, const std::string& base_dir) {
  const json cfg = read_export_config(dir);
  const std::string cfg_path = (fs::path(dir) / "kvgate_config.json").string();
  const ModelConfig& mc = base.config();
  GateConfig g;
  try {
    const json& b = cfg.at("base_model");
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
                  "same shape but other weights: use the base model the gates were trained on (" +
                      b.value("path", std::string("?")) + ")");
    }
    g = cfg.at("gate").get<GateConfig>();
  } catch (const json::exception& e) {
    throw_input(cfg_path, std::string("lacks a field or holds one of the wrong type (") + e.what() + ")", "export the run again");
  }
  auto gates = Gates::create(g, mc, 0, base.device());
  const std::string path = (fs::path(dir) / "gates.safetensors").string();
  gates->load(read_float_tensors(path), path);
  return gates;
}

std::unique_ptr<LoraAdapters> load_lora_export(const std::string& dir, const LlamaModel& base) {
  const fs::path file = fs::path(dir) / "lora.safetensors";
  const std::string cfg_path = (fs::path(dir) / "kvgate_config.json").string();
  const json cfg = read_export_config(dir);
  const bool listed = cfg.contains("lora") && cfg["lora"].is_object();
  if (!fs::exists(file) && !listed) return nullptr;
  // Used whole or refused: a LoRA the config lists must be there, and a file must be listed.
  if (!fs::exists(file)) throw_input(dir, "has no lora.safetensors although kvgate_config.json lists a LoRA", "export the run again");
  if (!listed) {
    throw_input(cfg_path, "has lora.safetensors beside it but no \"lora\" section (an export from before agate 0.1)",
                "re-export the run with agate export");
  }
  LoraConfig lc;
  try {
    lc = cfg["lora"].get<LoraConfig>();
  } catch (const json::exception& e) {
    throw_input(cfg_path, std::string("\"lora\" lacks a field or holds one of the wrong type (") + e.what() + ")", "export the run again");
  }
  if (lc.rank < 1) throw_input(cfg_path, "\"lora\" rank must be >= 1, found " + std::to_string(lc.rank), "export the run again");
  auto lora = std::make_unique<LoraAdapters>(lc, base.config(), 0, base.device());
  lora->load(read_float_tensors(file.string()), file.string());
  return lora;
}

LoadedExport load_export(const std::string& dir, const LlamaModel& base, const std::string& base_dir) {
  LoadedExport e;
  e.gates = load_gate_export(dir, base, base_dir);
  e.lora = load_lora_export(dir, base);
  return e;
}

}  // namespace agate
