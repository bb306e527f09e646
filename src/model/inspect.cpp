#include "agate/model/inspect.h"

#include <filesystem>

#include "agate/io/safetensors.h"

namespace agate {

ModelSummary summarize_model_folder(const std::string& dir) {
  ModelSummary s;
  s.config = load_model_config((std::filesystem::path(dir) / "config.json").string());
  WeightFolder w = WeightFolder::open(dir);
  for (const auto& name : w.names()) {
    const SafetensorsEntry& e = w.entry(name);
    int64_t numel = 1;
    for (int64_t d : e.shape) numel *= d;
    s.num_tensors += 1;
    s.num_parameters += numel;
    s.params_by_dtype[e.dtype] += numel;
    s.bytes_by_dtype[e.dtype] += static_cast<int64_t>(e.end - e.begin);
  }
  return s;
}

}  // namespace agate
