// Activation recomputation for one decoder layer (LibTorch's C++ API has no checkpoint helper):
// the forward keeps only the layer's input; backward runs the layer again with grad enabled.
// Internal to src/model: LlamaModel::run uses it when ForwardOptions::recompute is set.
#pragma once

#include <ATen/core/Tensor.h>

#include "agate/model/llama.h"

namespace agate {

class LayerRecompute {
 public:
  // h: [B, T, D] -> the layer's output [B, T, D]; `stats` receives the layer's decision, with
  // keep_mean differentiable as if the layer had run normally. Gradients reach the layer's
  // trainable leaves (gates, LoRA, or the weights in pretraining) and h. `model` and the
  // options' hooks must stay alive until backward has run; `positions` is copied.
  static at::Tensor run(const LlamaModel& model, int64_t layer, const at::Tensor& h, const Positions& positions,
                        const ForwardOptions& options, LayerStats* stats);

  // For the autograd function: one plain run of the layer.
  static at::Tensor layer(const LlamaModel& model, int64_t layer, const at::Tensor& h, const Positions& positions,
                          const ForwardOptions& options, LayerStats* stats) {
    return model.layer_forward(layer, h, positions, options, stats);
  }
};

}  // namespace agate
