// A gate configuration: what `gate.*` in a recipe says and what kvgate_config.json stores, with
// its fixed choices as enums (names: the recipe's and the export's strings) and one JSON mapping.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>

#include "agate/util/choices.h"

namespace agate {

enum class GateType { Attention, Mlp, None };  // "attention" | "mlp" | "none"
enum class Estimator { Ste, Soft };            // "ste" (hard flags, straight-through) | "soft" (probabilities)
// What a rule knows, as a gate input (gate.rule_feature; README, "Training what is evaluated"):
//   none:      the gate reads the hidden states only;
//   attention: also the attention each key receives from the context's queries in the layer's
//              own (frozen, full-cache) attention, the statistic H2O ranks by, as log(received)
//              and log(queries that see the key), weighted per layer and KV head by trained
//              weights that start at 0 (so the gate starts as it would without the feature).
//              Needs the whole context at once: a prefill, or training with a context/continuation
//              split (the continuation's keys are then always kept, as decoded tokens are).
enum class RuleFeature { None, Attention };

inline constexpr Choices<GateType, 3> kGateTypes{{"attention", "mlp", "none"}};
inline constexpr Choices<Estimator, 2> kEstimators{{"ste", "soft"}};
inline constexpr Choices<RuleFeature, 2> kRuleFeatures{{"none", "attention"}};

struct GateConfig {
  GateType type = GateType::Attention;
  int64_t heads = 4;               // attention gate: heads of its own causal attention
  int64_t head_dim = 32;           // attention gate: width of each head
  int64_t mlp_hidden = 64;         // mlp gate: hidden width
  double threshold = 0.5;          // flag = keep probability > threshold
  Estimator estimator = Estimator::Ste;
  int64_t sink_tokens = 0;         // the first positions are always kept
  int64_t recent_window = 0;       // evicted tokens stay visible this many positions
  double init_bias = 3.0;          // output bias at init: sigmoid(3) = 0.95, every token kept
  double init_std = 0.02;          // weight init
  RuleFeature rule_feature = RuleFeature::None;
};

// The export's "gate" object (kvgate_config.json): type, heads, head_dim, mlp_hidden, threshold,
// estimator, sink_tokens, recent_window, rule_feature (the init values are training-only and not
// stored). from_json throws nlohmann::json::exception on a missing or mistyped field, and
// agate::Error on an unknown type, estimator or rule feature name; a missing rule_feature (exports
// written before it existed) reads as none.
void to_json(nlohmann::json& j, const GateConfig& g);
void from_json(const nlohmann::json& j, GateConfig& g);

}  // namespace agate
