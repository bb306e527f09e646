#include "agate/gate/gates.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <map>

#include "agate/util/error.h"
#include "gate_types.h"

namespace agate {

std::unique_ptr<Gates> Gates::create(const GateConfig& gate, const ModelConfig& model, uint64_t seed) {
  if (gate.threshold <= 0 || gate.threshold >= 1) throw_usage("gate.threshold must be in (0, 1)");
  if (gate.estimator != "ste" && gate.estimator != "soft") throw_usage("gate.estimator must be ste or soft");
  if (gate.sink_tokens < 0 || gate.recent_window < 0) throw_usage("gate.sink_tokens and gate.recent_window must be >= 0");
  if (gate.type == "attention") return make_attention_gates(gate, model, seed);
  if (gate.type == "mlp") return make_mlp_gates(gate, model, seed);
  throw_usage("gate.type '" + gate.type + "' has no gates to create", "use attention or mlp");
}

at::Tensor Gates::param(const std::string& name, std::vector<int64_t> shape, double value, bool constant,
                        at::Generator& gen) {
  at::Tensor t = constant ? at::full(shape, value, at::kFloat) : at::normal(0.0, value, shape, gen);
  t.requires_grad_(true);
  params_.push_back({name, t});
  return t;
}

at::Tensor Gates::key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions) {
  const int64_t B = x.size(0), T = x.size(1), Hkv = model_.num_key_value_heads;
  at::Tensor p = probabilities(layer, x, positions);  // [B, T, Hkv] float32
  at::Tensor flags = forced_ >= 0 ? at::full({B, T, Hkv}, static_cast<float>(forced_), p.options())
                                  : (p.detach() > config_.threshold).to(at::kFloat);
  at::Tensor keep;
  // Without gradients (inference, validation) attention uses the hard flags whatever the
  // estimator: that is what a KV cache can store.
  if (forced_ >= 0 || !at::GradMode::is_enabled()) keep = flags;
  else if (config_.estimator == "ste") keep = flags + p - p.detach();  // forward: flags; backward: d/dp
  else keep = p;
  if (config_.sink_tokens > 0) {
    at::Tensor sink = (positions < config_.sink_tokens).view({1, T, 1});
    keep = at::where(sink, at::ones({}, keep.options()), keep);
    flags = at::where(sink, at::ones({}, flags.options()), flags);
  }
  if (static_cast<int64_t>(layer_flags_.size()) <= layer) {
    layer_flags_.resize(static_cast<size_t>(layer) + 1);
    layer_surrogate_.resize(static_cast<size_t>(layer) + 1);
    layer_hard_.resize(static_cast<size_t>(layer) + 1);
  }
  layer_hard_[static_cast<size_t>(layer)] = flags.detach();
  layer_flags_[static_cast<size_t>(layer)] = flags.mean(at::IntArrayRef{0, 1});
  layer_surrogate_[static_cast<size_t>(layer)] = keep.mean();
  return keep;
}

KeepStats Gates::stats() const {
  KeepStats s;
  std::vector<at::Tensor> f, g;
  for (size_t i = 0; i < layer_flags_.size(); ++i) {
    if (!layer_flags_[i].defined()) continue;
    f.push_back(layer_flags_[i]);
    g.push_back(layer_surrogate_[i]);
  }
  if (f.empty()) return s;
  s.flags = at::stack(f);
  s.surrogate = at::stack(g);
  return s;
}

at::Tensor Gates::surrogate(int64_t layer) const {
  return layer < static_cast<int64_t>(layer_surrogate_.size()) ? layer_surrogate_[static_cast<size_t>(layer)] : at::Tensor();
}

at::Tensor Gates::flags(int64_t layer) const {
  return layer < static_cast<int64_t>(layer_hard_.size()) ? layer_hard_[static_cast<size_t>(layer)] : at::Tensor();
}

void Gates::reset_stats() {
  layer_flags_.clear();
  layer_surrogate_.clear();
  layer_hard_.clear();
}

void Gates::load(const NamedTensors& values, const std::string& source) {
  std::map<std::string, at::Tensor> by_name(values.begin(), values.end());
  if (by_name.size() != params_.size()) {
    throw_input(source, "holds " + std::to_string(by_name.size()) + " gate tensors, the gate config needs " +
                            std::to_string(params_.size()),
                "was it written for another gate type or size?");
  }
  for (auto& [name, t] : params_) {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw_input(source, "missing gate tensor '" + name + "'", "was it written for another gate type?");
    if (it->second.sizes() != t.sizes()) {
      throw_input(source, "gate tensor '" + name + "' has the wrong shape", "was it written for another model or gate size?");
    }
    c10::NoGradGuard no_grad;
    t.copy_(it->second.to(at::kFloat));
  }
}

}  // namespace agate
