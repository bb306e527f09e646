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

}  // namespace agate
