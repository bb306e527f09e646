#include "agate/train/recipe_gate.h"

namespace agate {

GateConfig gate_config_from(const Recipe& r) {
  GateConfig g;
  g.type = parse_gate_type(r.str("gate.type"));
  g.heads = r.integer("gate.heads");
  g.head_dim = r.integer("gate.head_dim");
  g.mlp_hidden = r.integer("gate.mlp_hidden");
  g.threshold = r.number("gate.threshold");
  g.estimator = parse_estimator(r.str("gate.estimator"));
  g.sink_tokens = r.integer("gate.sink_tokens");
  g.recent_window = r.integer("gate.recent_window");
  g.init_bias = r.number("gate.init_bias");
  return g;
}

}  // namespace agate
