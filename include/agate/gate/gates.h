// Attention-Gates: per layer, a small trainable module that reads the normalised hidden states
// feeding attention and emits one keep flag per token and KV head (DESIGN.md section 3).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agate/gate/gate_config.h"
#include "agate/io/named_tensors.h"
#include "agate/model/config.h"
#include "agate/model/llama.h"

namespace agate {


// All layers' gates of one model. Parameters are float32 and named as in the export,
// "model.layers.{i}.self_attn.kv_gate.<part>".
class Gates : public KeyVisibility {
 public:
  // Fresh gates for a model, initialised from `seed` so that every token starts kept. The
  // parameters live on `device` (float32); their random values are drawn on the CPU with the
  // seed's generator whatever the device, so they are the same numbers everywhere.
  static std::unique_ptr<Gates> create(const GateConfig& gate, const ModelConfig& model, uint64_t seed,
                                       c10::Device device = c10::kCPU);

  // x: [B, T, D]; positions: [T] int64 -> the layer's decision on x's device (see
  // KeyVisibility and LayerKeep): keep [B, T, Hkv] float32 is the estimator's when `train`
  // (STE: hard flags forward, d/dp backward; soft: p), else the hard flags; flags and their
  // per-head means are the hard flags. Sinks are 1 either way; with a rule feature, so are the
  // keys at or after in.context_end (a continuation's, as decoded tokens are kept). The
  // elementwise step is keep_step() (agate/gate/keep_step.h). Reads nothing but its arguments and
  // the parameters.
  LayerKeep key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool train,
                     const KeyInputs& in) override;
  int64_t recent_window() const override { return config_.recent_window; }

  // Keep probabilities of one layer: x: [B, T, D] -> [B, T, Hkv] float32,
  //   p = sigmoid(logits(x) + sum_f rule_feature_f * rule.weight[h, f])
  // where the rule term exists with gate.rule_feature (rule_features(): in.q and in.k needed, the
  // whole context in this forward: in.start == 0, else a usage error).
  at::Tensor probabilities(int64_t layer, const at::Tensor& x, const at::Tensor& positions, const KeyInputs& in);

  const NamedTensors& parameters() const { return params_; }
  // Copies values into the parameters (names and shapes must match exactly).
  void load(const NamedTensors& values, const std::string& source);
  const GateConfig& config() const { return config_; }
  // Where the parameters live.
  c10::Device device() const { return device_; }

  // Decode-time gating: with the cache on, probabilities() for new tokens sees the earlier
  // tokens of the sequence too (the attention gate keeps its own small K/V cache), so tokens
  // can arrive one at a time. reset_decode_cache() starts a new sequence.
  virtual void set_decode_cache(bool on) { (void)on; }
  virtual void reset_decode_cache() {}

  // Forces every flag to `value` (0 or 1) for tests and ablations; -1 turns forcing off.
  void force_flags(int value) { forced_ = value; }

  ~Gates() override = default;

 protected:
  Gates(GateConfig config, const ModelConfig& model, c10::Device device = c10::kCPU)
      : config_(std::move(config)), model_(model), device_(device) {}
  // The gate type's keep logits of one layer: x: [B, T, D] -> [B, T, Hkv] float32.
  virtual at::Tensor logits(int64_t layer, const at::Tensor& x, const at::Tensor& positions) = 0;
  // Adds the rule feature's weights (per layer "rule.weight" [Hkv, 2], zero) when the config asks
  // for them; Gates::create calls it after the gate type's own parameters.
  void add_rule_weights();
  // A float32 parameter of `shape` on device_: N(0, std_or_const^2) drawn from `gen` (a CPU
  // generator, so the values do not depend on the device), or the constant std_or_const.
  at::Tensor param(const std::string& name, std::vector<int64_t> shape, double std_or_const, bool constant,
                   at::Generator& gen);
  std::string prefix(int64_t layer) const { return "model.layers." + std::to_string(layer) + ".self_attn.kv_gate."; }

  GateConfig config_;
  ModelConfig model_;
  c10::Device device_;
  NamedTensors params_;

 private:
  std::vector<at::Tensor> rule_weights_;  // per layer [Hkv, 2] (empty without a rule feature)
  int forced_ = -1;
};

}  // namespace agate
