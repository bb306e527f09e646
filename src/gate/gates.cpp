#include "agate/gate/gates.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "agate/gate/keep_step.h"
#include "agate/gate/rule_feature.h"
#include "agate/util/error.h"
#include "gate_types.h"

namespace agate {

std::unique_ptr<Gates> Gates::create(const GateConfig& gate, const ModelConfig& model, uint64_t seed,
                                     c10::Device device) {
  if (gate.threshold <= 0 || gate.threshold >= 1) throw_usage("gate.threshold must be in (0, 1)");
  if (gate.sink_tokens < 0 || gate.recent_window < 0) throw_usage("gate.sink_tokens and gate.recent_window must be >= 0");
  if (gate.type == GateType::Attention && (gate.heads < 1 || gate.head_dim < 2 || gate.head_dim % 2 != 0)) {
    throw_usage("attention gate: heads must be >= 1 and head_dim even and >= 2, found heads " + std::to_string(gate.heads) +
                    ", head_dim " + std::to_string(gate.head_dim),
                "RoPE rotates pairs of dimensions");
  }
  if (gate.type == GateType::Mlp && gate.mlp_hidden < 1) {
    throw_usage("mlp gate: mlp_hidden must be >= 1, found " + std::to_string(gate.mlp_hidden));
  }
  std::unique_ptr<Gates> g;
  if (gate.type == GateType::Attention) g = make_attention_gates(gate, model, seed, device);
  else if (gate.type == GateType::Mlp) g = make_mlp_gates(gate, model, seed, device);
  else throw_internal("Gates::create with gate.type none (callers create no gates then)");
  g->add_rule_weights();
  return g;
}

void Gates::add_rule_weights() {
  if (config_.rule_feature == RuleFeature::None) return;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);  // unused: the weights are constant
  for (int64_t i = 0; i < model_.num_hidden_layers; ++i) {
    rule_weights_.push_back(param(prefix(i) + "rule.weight", {model_.num_key_value_heads, kRuleFeatureCount}, 0.0, true, gen));
  }
}

at::Tensor Gates::probabilities(int64_t layer, const at::Tensor& x, const at::Tensor& positions, const KeyInputs& in) {
  at::Tensor z = logits(layer, x, positions);  // [B, T, Hkv]
  if (config_.rule_feature != RuleFeature::None) {
    if (!in.q.defined() || !in.k.defined()) throw_internal("gates with a rule feature need the layer's queries and keys");
    if (in.start != 0) {
      throw_usage("gates with gate.rule_feature " + std::string(kRuleFeatures.name(config_.rule_feature)) +
                      " decide over a whole prefill: decode-time gating and chunked prefills are not supported",
                  "drop --gate-decode, or use gates trained without a rule feature");
    }
    const at::Tensor f = rule_features(in.q, in.k, in.context_end);               // [B, T, Hkv, 2]
    z = z + (f * rule_weights_[static_cast<size_t>(layer)]).sum(-1);              // [Hkv, 2] broadcasts
  }
  return at::sigmoid(z);
}

at::Tensor Gates::param(const std::string& name, std::vector<int64_t> shape, double value, bool constant,
                        at::Generator& gen) {
  // Random values come from the CPU generator and then move, so they are the same on every device.
  at::Tensor t = constant ? at::full(shape, value, at::TensorOptions().dtype(at::kFloat).device(device_))
                          : at::normal(0.0, value, shape, gen).to(device_, at::kFloat);
  t.requires_grad_(true);
  params_.push_back({name, t});
  return t;
}

LayerKeep Gates::key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool train,
                          const KeyInputs& in) {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor p = probabilities(layer, x, positions, in);  // [B, T, Hkv] float32
  // Outside training (inference, validation) attention uses the hard flags whatever the
  // estimator: that is what a KV cache can store. Forced flags carry no gradient either.
  KeepMode mode = KeepMode::kHard;
  if (forced_ < 0 && train) mode = config_.estimator == Estimator::Ste ? KeepMode::kStraightThrough : KeepMode::kSoft;
  // One fused step: keep (STE: flags forward, d/dp backward; soft: p), flags and their
  // per-head sums, sinks kept.
  KeepStepResult r = keep_step(p, positions, config_.threshold, config_.sink_tokens, mode, forced_);
  LayerKeep k;
  k.keep = r.keep;
  k.flags = r.flags.detach();
  k.flag_mean = r.flag_sum.div(B * T);  // sum / count: what mean() computes on the CPU, bit for bit
  if (config_.rule_feature != RuleFeature::None && in.context_end < T) {
    // The continuation's keys carry no feature (no context query sees them): kept, as a
    // compressed cache keeps the tokens decoded after it.
    const at::Tensor cont = (at::arange(T, p.options().dtype(at::kLong)) >= in.context_end).view({1, T, 1});
    k.keep = at::where(cont, at::ones_like(k.keep), k.keep);
    k.flags = at::where(cont, at::ones_like(k.flags), k.flags);
    k.flag_mean = k.flags.slice(1, 0, in.context_end).sum(at::IntArrayRef{0, 1}).div(B * in.context_end);
    k.decided_end = in.context_end;  // the sparsity target and the keep statistics are the context's
  }
  return k;
}

void Gates::load(const NamedTensors& values, const std::string& source) {
  load_named(params_, values, source, "gate", "was it written for another model, gate type or gate size?");
}

}  // namespace agate
