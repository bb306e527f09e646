// AdamW with decoupled weight decay (Loshchilov & Hutter; the same update as torch.optim.AdamW),
// written out so its whole state is a few named tensors that checkpoints store exactly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "agate/io/safetensors.h"

namespace agate {

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  // params: trainable leaves (float32), named (names key the saved state).
  AdamW(NamedTensors params, AdamWOptions options);

  // One update with the gradients in params' .grad() (missing grads are skipped); `lr` is
  // this step's learning rate.
  void step(double lr);
  void zero_grad();

  int64_t steps() const { return steps_; }
  // State as named tensors: "<param>.exp_avg", "<param>.exp_avg_sq" (and the step count,
  // returned separately). load_state checks names and shapes.
  NamedTensors state() const;
  void load_state(const NamedTensors& state, int64_t steps, const std::string& source);

 private:
  NamedTensors params_;
  AdamWOptions opt_;
  std::vector<at::Tensor> m_, v_;
  int64_t steps_ = 0;
};

}  // namespace agate
