// Loading a gate export: trained gates on their own, dropped next to the unchanged base weights
// (DESIGN.md section 4). Written by export_gates (agate/train/export_gates.h), beside training.
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

}  // namespace agate
