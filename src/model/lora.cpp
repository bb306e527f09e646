#include "agate/model/lora.h"

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "agate/util/error.h"

namespace agate {

void to_json(nlohmann::json& j, const LoraConfig& c) {
  j = {{"rank", c.rank}, {"alpha", c.alpha}, {"targets", c.targets}};
}

void from_json(const nlohmann::json& j, LoraConfig& c) {
  j.at("rank").get_to(c.rank);
  j.at("alpha").get_to(c.alpha);
  j.at("targets").get_to(c.targets);
}

LoraAdapters::LoraAdapters(const LoraConfig& c, const ModelConfig& m, uint64_t seed, c10::Device device)
    : config_(c), scale_(c.alpha / static_cast<double>(c.rank)) {
  if (c.rank <= 0) throw_internal("LoraAdapters need a positive rank (callers skip rank 0)");
  const int64_t D = m.hidden_size, I = m.intermediate_size, hd = m.head_dim;
  const int64_t Hq = m.num_attention_heads * hd, Hk = m.num_key_value_heads * hd;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const Projection all[] = {Projection::Q, Projection::K, Projection::V, Projection::O,
                            Projection::Gate, Projection::Up, Projection::Down};
  for (const auto& t : c.targets) {
    bool known = false;
    for (Projection p : all) known |= t == projection_name(p);
    if (!known) throw_usage("unknown lora target '" + t + "'", "use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
  }
  for (int64_t i = 0; i < m.num_hidden_layers; ++i) {
    for (Projection p : all) {
      const std::string name = projection_name(p);
      bool wanted = false;
      for (const auto& t : c.targets) wanted |= t == name;
      if (!wanted) continue;
      int64_t in = D, out = D;
      switch (p) {
        case Projection::Q: out = Hq; break;
        case Projection::K: case Projection::V: out = Hk; break;
        case Projection::O: in = Hq; break;
        case Projection::Gate: case Projection::Up: out = I; break;
        case Projection::Down: in = I; break;
      }
      const std::string base = "model.layers." + std::to_string(i) + (p <= Projection::O ? ".self_attn." : ".mlp.") + name;
      // A: uniform(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform with a = sqrt(5)); B: zeros.
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      at::Tensor A = at::empty({c.rank, in}, at::kFloat).uniform_(-bound, bound, gen).to(device).requires_grad_(true);
      at::Tensor B = at::zeros({out, c.rank}, at::TensorOptions(at::kFloat).device(device)).requires_grad_(true);
      params_.push_back({base + ".lora_A.weight", A});
      params_.push_back({base + ".lora_B.weight", B});
      ab_[{i, static_cast<int>(p)}] = {A, B};
    }
  }
}

at::Tensor LoraAdapters::delta(int64_t layer, Projection which, const at::Tensor& x) {
  auto it = ab_.find({layer, static_cast<int>(which)});
  if (it == ab_.end()) return {};
  const auto& [A, B] = it->second;
  return at::linear(at::linear(x.to(at::kFloat), A), B) * scale_;  // A, B live on x's device (see to())
}

void LoraAdapters::load(const NamedTensors& values, const std::string& source) {
  load_named(params_, values, source, "LoRA", "was it written for another LoRA rank or targets? export the run again");
}

}  // namespace agate
