// AdamW with decoupled weight decay (Loshchilov & Hutter; the update of torch.optim.AdamW in its
// capturable form), written out so its whole state is a few named tensors that checkpoints
// store exactly. Everything stays on the parameters' device: the step counts are per-parameter
// tensors (a parameter without a gradient is not stepped, as in torch), and a step can be
// skipped by a device-side flag, so a training step never waits for the host.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "agate/io/named_tensors.h"

namespace agate {

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  // params: trainable leaves (float32), named (names key the saved state).
  AdamW(NamedTensors params, AdamWOptions options);
  // One update with the gradients in params' .grad() (missing grads are skipped); `lr` is
  // this step's learning rate. `apply`: a 0-dim bool tensor on the parameters' device; where
  // it is false nothing changes (parameters, moments, step counts). Undefined = apply.
  void step(double lr, const at::Tensor& apply = {});
  void zero_grad();
  // The largest per-parameter step count (reads the device: for checkpoints and logs).
  int64_t steps() const;
  // State as named tensors: "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step" (0-dim
  // float32). load_state checks names and shapes; a state without ".step" entries (agate
  // 0.1 checkpoints) takes `steps` for every parameter.
  NamedTensors state() const;
  void load_state(const NamedTensors& state, int64_t steps, const std::string& source);

 private:
  NamedTensors params_;
  AdamWOptions opt_;
  std::vector<at::Tensor> m_, v_, t_;
};

}  // namespace agate
