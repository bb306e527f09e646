// Named tensors: the currency between models, gates, optimizers and files (HF names, in order).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace agate {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

}  // namespace agate
