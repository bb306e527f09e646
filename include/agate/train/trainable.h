// What a gates-mode run trains, built from its recipe: the gates (gate.*) and the LoRA adapters
// (lora.*), both on a frozen base.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>

#include "agate/gate/gates.h"
#include "agate/model/lora.h"
#include "agate/train/run_config.h"

namespace agate {

struct TrainableParts {
  std::unique_ptr<Gates> gates;         // null when gate.type is none
  std::unique_ptr<LoraAdapters> lora;   // null when lora.rank is 0
  NamedTensors trainable;               // the gates' parameters, then LoRA's
};

// Gates from `seed`, LoRA from seed + 1, parameters on `device` (the meta device counts them
// without memory). A run that trains nothing is check_recipe's to refuse.
TrainableParts make_trainable_parts(const RunConfig& config, const ModelConfig& model, uint64_t seed, c10::Device device);

int64_t numel(const NamedTensors& tensors);

}  // namespace agate
