#include "agate/gate/gate_config.h"

#include <nlohmann/json.hpp>

namespace agate {

void to_json(nlohmann::json& j, const GateConfig& g) {
  j = {{"type", kGateTypes.name(g.type)}, {"heads", g.heads},
       {"head_dim", g.head_dim},          {"mlp_hidden", g.mlp_hidden},
       {"threshold", g.threshold},        {"estimator", kEstimators.name(g.estimator)},
       {"sink_tokens", g.sink_tokens},    {"recent_window", g.recent_window},
       {"rule_feature", kRuleFeatures.name(g.rule_feature)}};
}

void from_json(const nlohmann::json& j, GateConfig& g) {
  g.type = kGateTypes.parse(j.at("type").get<std::string>(), "gate.type");
  j.at("heads").get_to(g.heads);
  j.at("head_dim").get_to(g.head_dim);
  j.at("mlp_hidden").get_to(g.mlp_hidden);
  j.at("threshold").get_to(g.threshold);
  g.estimator = kEstimators.parse(j.at("estimator").get<std::string>(), "gate.estimator");
  j.at("sink_tokens").get_to(g.sink_tokens);
  j.at("recent_window").get_to(g.recent_window);
  g.rule_feature = kRuleFeatures.parse(j.value("rule_feature", std::string("none")), "gate.rule_feature");
}

}  // namespace agate
