// Named tensors: the currency between models, gates, optimizers and files (HF names, in order).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace agate {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Copies `values` into `params` in place (no autograd; converted to each parameter's dtype):
// exactly the same names and shapes, else refused (agate::Error, Input) naming `source`, e.g.
// "holds 3 gate tensors, the gate config needs 4" / "lacks gate tensor 'x'" / "gate tensor 'x'
// has the wrong shape", with `what` ("gate", "LoRA") and `hint`.
void load_named(const NamedTensors& params, const NamedTensors& values, const std::string& source,
                const std::string& what, const std::string& hint);

}  // namespace agate
