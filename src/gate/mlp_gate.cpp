// The cheap gate (gate.type: mlp), in the spirit of Locret's retaining heads: a per-token MLP on
// the normalised hidden state, no attention over the context.
//   x [B, T, D] -> gelu(x W1^T + b1) [B, T, hidden] -> W2 . + b2 [B, T, Hkv] -> sigmoid
#include <ATen/ATen.h>

#include "gate_types.h"

namespace agate {

namespace {

class MlpGates : public Gates {
 public:
  MlpGates(const GateConfig& g, const ModelConfig& m, uint64_t seed, c10::Device device) : Gates(g, m, device) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const int64_t D = m.hidden_size, Hd = g.mlp_hidden, Hkv = m.num_key_value_heads;
    for (int64_t i = 0; i < m.num_hidden_layers; ++i) {
      Layer L;
      L.w1 = param(prefix(i) + "fc1.weight", {Hd, D}, g.init_std, false, gen);
      L.b1 = param(prefix(i) + "fc1.bias", {Hd}, 0.0, true, gen);
      L.w2 = param(prefix(i) + "fc2.weight", {Hkv, Hd}, g.init_std, false, gen);
      L.b2 = param(prefix(i) + "fc2.bias", {Hkv}, g.init_bias, true, gen);
      layers_.push_back(L);
    }
  }

  // x: [B, T, D] on the parameters' device -> keep logits [B, T, Hkv] float32.
  at::Tensor logits(int64_t layer, const at::Tensor& x, const at::Tensor&) override {
    const Layer& L = layers_[static_cast<size_t>(layer)];
    return at::linear(at::gelu(at::linear(x.to(at::kFloat), L.w1, L.b1)), L.w2, L.b2);
  }

 private:
  struct Layer {
    at::Tensor w1, b1, w2, b2;
  };
  std::vector<Layer> layers_;
};

}  // namespace

std::unique_ptr<Gates> make_mlp_gates(const GateConfig& gate, const ModelConfig& model, uint64_t seed,
                                      c10::Device device) {
  return std::make_unique<MlpGates>(gate, model, seed, device);
}

}  // namespace agate
