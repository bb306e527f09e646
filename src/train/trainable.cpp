#include "agate/train/trainable.h"

#include <ATen/ATen.h>

#include "agate/train/recipe_gate.h"

namespace agate {

TrainableParts make_trainable_parts(const Recipe& r, const ModelConfig& mc, uint64_t seed, c10::Device device) {
  TrainableParts p;
  if (r.str("gate.type") != "none") {
    p.gates = Gates::create(gate_config_from(r), mc, seed, device);
    p.trainable.insert(p.trainable.end(), p.gates->parameters().begin(), p.gates->parameters().end());
  }
  if (r.integer("lora.rank") > 0) {
    LoraConfig lc;
    lc.rank = r.integer("lora.rank");
    lc.alpha = r.number("lora.alpha");
    lc.targets = r.list("lora.targets");
    p.lora = std::make_unique<LoraAdapters>(lc, mc, seed + 1, device);
    p.trainable.insert(p.trainable.end(), p.lora->parameters().begin(), p.lora->parameters().end());
  }
  if (p.trainable.empty()) {
    r.fail("gate.type", "nothing to train: gate.type is none and lora.rank is 0", "enable gates or LoRA, or use train.mode: pretrain");
  }
  return p;
}

int64_t numel(const NamedTensors& ts) {
  int64_t n = 0;
  for (const auto& kv : ts) n += kv.second.numel();
  return n;
}

}  // namespace agate
