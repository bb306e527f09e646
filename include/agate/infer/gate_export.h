// The gate export: trained gates on their own, to drop next to the unchanged base weights in
// any compatible inference backend (DESIGN.md section 4).
//
//   DIR/gates.safetensors     float32, "model.layers.{i}.self_attn.kv_gate.<part>"
//   DIR/lora.safetensors      only when the run trained LoRA (PEFT names)
//   DIR/kvgate_config.json    format, gate type/sizes/threshold/sinks/window, the base model's
//                             shape and weight fingerprint, provenance, measured keep ratios
//   DIR/head_keep_ratio.tsv   layers x KV heads keep ratios
//   DIR/README.md             a short model card
#pragma once

#include <memory>
#include <string>

#include "agate/gate/gates.h"
#include "agate/model/lora.h"
#include "agate/model/llama.h"

namespace agate {

struct ExportOptions {
  std::string run_dir;
  int64_t step = -1;        // checkpoint step; -1 = the newest complete one
  std::string out;
  std::string device = "auto";  // where the keep ratios are measured (see resolve_device)
  int64_t batches = 4;      // validation batches used to measure the keep ratios
  std::string model;        // the base model; empty = the run's model.path (relative to where it trained)
  bool force = false;       // write into a non-empty folder that holds no export
};

// Writes the export; returns the measured mean keep ratio (with the run's LoRA applied, as the
// export is used). The base model must have the weights fingerprint the checkpoint recorded.
// Refuses a non-empty --out that holds no export unless options.force; writes into a staging
// folder inside it and moves the files in only when all are written (an earlier export's
// lora.safetensors goes when this run has none).
double export_gates(const ExportOptions& options);

// Loads an export for `base` (loaded from `base_dir`). Refuses, with a hint, a base whose
// layers, hidden size, KV heads or head_dim differ, or whose weights fingerprint differs.
// The gates are created on base.device().
std::unique_ptr<Gates> load_gate_export(const std::string& dir, const LlamaModel& base, const std::string& base_dir);
// The LoRA adapters trained with the gates (DIR/lora.safetensors), or null when there are none.
// Call after load_gate_export, which checks that the export fits `base`.
std::unique_ptr<LoraAdapters> load_lora_export(const std::string& dir, const LlamaModel& base);

// An export is used whole or refused: its gates and, when it has one, its LoRA (what eval,
// generate and score load).
struct LoadedExport {
  std::unique_ptr<Gates> gates;
  std::unique_ptr<LoraAdapters> lora;  // null when the run trained none
};
LoadedExport load_export(const std::string& dir, const LlamaModel& base, const std::string& base_dir);

class Recipe;
// The run's LoRA config (lora.rank, lora.alpha, lora.targets), and values copied into adapters
// (refused naming `source` when a tensor is missing, extra or misshapen).
LoraConfig lora_config(const Recipe& r);
void load_lora_tensors(LoraAdapters& lora, const NamedTensors& values, const std::string& source);

}  // namespace agate
