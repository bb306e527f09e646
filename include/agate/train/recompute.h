// Activation recomputation for one decoder layer (LibTorch's C++ API has no checkpoint helper):
// the forward keeps only the layer's input; backward runs the layer again with grad enabled.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

#include "agate/model/llama.h"

namespace agate {

class Gates;

// h: [B, T, D] -> (layer output [B, T, D], the layer's keep surrogate (scalar) or undefined when
// `gates` is null). Gradients reach the layer's trainable leaves (gates, LoRA, or the weights in
// pretrain mode) and h as if the layer had run normally. `model`, `positions`, `gates` and the
// options' hooks must stay alive until backward has run.
std::pair<at::Tensor, at::Tensor> recomputed_layer(const LlamaModel& model, int64_t layer, const at::Tensor& h,
                                                   const Positions& positions, const ForwardOptions& options,
                                                   Gates* gates);

}  // namespace agate
