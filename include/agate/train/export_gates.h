// Writing a gate export from a training run (`agate export`): the run's trained gates on their
// own, with their measured keep ratios, for any compatible inference backend. The format is
// agate/infer/gate_export.h's, which loads it (DESIGN.md section 4).
#pragma once

#include <cstdint>
#include <string>

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
// lora.safetensors goes when this run has none). The keep ratios are measure_held_out's
// (agate/train/held_out.h), the trainer's validation, one sequence per forward.
double export_gates(const ExportOptions& options);

}  // namespace agate
