// The gate section of a recipe as a GateConfig (shared by the trainer and the exporter).
#pragma once

#include "agate/gate/gates.h"
#include "agate/train/recipe.h"

namespace agate {

GateConfig gate_config_from(const Recipe& recipe);

}  // namespace agate
