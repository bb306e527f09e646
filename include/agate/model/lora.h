// LoRA adapters on a frozen model's projections: delta(x) = (alpha / r) * (x A^T) B^T, with
// A [r, in] uniform(+-1/sqrt(in)) and B [out, r] zero (as PEFT initialises them), so training
// starts exactly at the base model. Parameters are float32, named as PEFT names them (without
// its "base_model.model." prefix): "model.layers.{i}.self_attn.q_proj.lora_A.weight", ...
#pragma once

#include <ATen/core/Tensor.h>

#include <c10/core/Device.h>
#include <nlohmann/json_fwd.hpp>

#include <map>
#include <string>
#include <vector>

#include "agate/io/named_tensors.h"
#include "agate/model/config.h"
#include "agate/model/llama.h"

namespace agate {

struct LoraConfig {
  int64_t rank = 0;  // 0 = no LoRA
  double alpha = 16.0;
  std::vector<std::string> targets = {"q_proj", "v_proj"};
};

// The export's "lora" object: {"rank", "alpha", "targets"}. from_json throws
// nlohmann::json::exception on a missing or mistyped field.
void to_json(nlohmann::json& j, const LoraConfig& c);
void from_json(const nlohmann::json& j, LoraConfig& c);

class LoraAdapters : public ProjectionAdapter {
 public:
  // Parameters are float32 on `device`, drawn on the CPU from `seed` (the same on every device).
  LoraAdapters(const LoraConfig& config, const ModelConfig& model, uint64_t seed, c10::Device device = c10::kCPU);

  at::Tensor delta(int64_t layer, Projection which, const at::Tensor& x) override;
  const NamedTensors& parameters() const { return params_; }
  // Copies values into the parameters: exactly the same names and shapes, or refused naming
  // `source` (another rank or targets) with a hint.
  void load(const NamedTensors& values, const std::string& source);

 private:
  LoraConfig config_;
  double scale_;
  std::map<std::pair<int64_t, int>, std::pair<at::Tensor, at::Tensor>> ab_;  // (layer, proj) -> (A, B)
  NamedTensors params_;
};

}  // namespace agate
