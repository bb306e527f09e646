// The gate implementations behind Gates::create (gate-internal header).
#pragma once

#include <memory>

#include "agate/gate/gates.h"

namespace agate {

std::unique_ptr<Gates> make_attention_gates(const GateConfig& gate, const ModelConfig& model, uint64_t seed);
std::unique_ptr<Gates> make_mlp_gates(const GateConfig& gate, const ModelConfig& model, uint64_t seed);

}  // namespace agate
