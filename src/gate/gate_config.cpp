#include "agate/gate/gate_config.h"

#include <nlohmann/json.hpp>

#include "agate/util/error.h"

namespace agate {

const char* gate_type_name(GateType type) {
  switch (type) {
    case GateType::Attention: return "attention";
    case GateType::Mlp: return "mlp";
    case GateType::None: return "none";
  }
  return "?";
}

const char* estimator_name(Estimator estimator) { return estimator == Estimator::Ste ? "ste" : "soft"; }

GateType parse_gate_type(const std::string& name, const std::string& what) {
  for (GateType t : {GateType::Attention, GateType::Mlp, GateType::None})
    if (name == gate_type_name(t)) return t;
  throw_usage(what + " '" + name + "' is not a gate type", "use attention, mlp or none");
}

Estimator parse_estimator(const std::string& name, const std::string& what) {
  for (Estimator e : {Estimator::Ste, Estimator::Soft})
    if (name == estimator_name(e)) return e;
  throw_usage(what + " '" + name + "' is not an estimator", "use ste or soft");
}

void to_json(nlohmann::json& j, const GateConfig& g) {
  j = {{"type", gate_type_name(g.type)}, {"heads", g.heads},
       {"head_dim", g.head_dim},          {"mlp_hidden", g.mlp_hidden},
       {"threshold", g.threshold},        {"estimator", estimator_name(g.estimator)},
       {"sink_tokens", g.sink_tokens},    {"recent_window", g.recent_window}};
}

void from_json(const nlohmann::json& j, GateConfig& g) {
  g.type = parse_gate_type(j.at("type").get<std::string>(), "gate.type");
  j.at("heads").get_to(g.heads);
  j.at("head_dim").get_to(g.head_dim);
  j.at("mlp_hidden").get_to(g.mlp_hidden);
  j.at("threshold").get_to(g.threshold);
  g.estimator = parse_estimator(j.at("estimator").get<std::string>(), "gate.estimator");
  j.at("sink_tokens").get_to(g.sink_tokens);
  j.at("recent_window").get_to(g.recent_window);
}

}  // namespace agate
