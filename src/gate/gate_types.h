// The gate implementations behind Gates::create (gate-internal header).
#pragma once

#include <memory>

#include "agate/gate/gates.h"

namespace agate {

// Parameters on `device` (float32), values drawn on the CPU from `seed`.
std::unique_ptr<Gates> make_attention_gates(const GateConfig& gate, const ModelConfig& model, uint64_t seed,
                                            c10::Device device);
std::unique_ptr<Gates> make_mlp_gates(const GateConfig& gate, const ModelConfig& model, uint64_t seed,
                                      c10::Device device);

}  // namespace agate
