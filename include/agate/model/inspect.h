// What a HF model folder holds, read from headers only (no weights are loaded).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "agate/model/config.h"

namespace agate {

struct ModelSummary {
  ModelConfig config;
  int64_t num_tensors = 0;
  int64_t num_parameters = 0;                      // counted from the stored tensors
  std::map<std::string, int64_t> bytes_by_dtype;   // safetensors dtype -> bytes
  std::map<std::string, int64_t> params_by_dtype;
};

ModelSummary summarize_model_folder(const std::string& dir);

// Fingerprint ("0x" + 8 hex digits) of a model folder's weights: CRC-32 over config.json, every
// safetensors header and file size, and the data (all of it up to 64 MB per file; beyond that
// the first and last 4 MB and 256 evenly spaced 4 KB blocks, so a 7B model takes well under a
// second). Checkpoints and gate exports record it to refuse another base model.
std::string weights_fingerprint(const std::string& dir);

}  // namespace agate
