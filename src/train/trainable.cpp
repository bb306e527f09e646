#include "agate/train/trainable.h"

#include <ATen/ATen.h>


namespace agate {

TrainableParts make_trainable_parts(const RunConfig& c, const ModelConfig& mc, uint64_t seed, c10::Device device) {
  TrainableParts p;
  if (c.gate.type != GateType::None) {
    p.gates = Gates::create(c.gate, mc, seed, device);
    p.trainable.insert(p.trainable.end(), p.gates->parameters().begin(), p.gates->parameters().end());
  }
  if (c.lora.rank > 0) {
    p.lora = std::make_unique<LoraAdapters>(c.lora, mc, seed + 1, device);
    p.trainable.insert(p.trainable.end(), p.lora->parameters().begin(), p.lora->parameters().end());
  }
  return p;
}

int64_t numel(const NamedTensors& ts) {
  int64_t n = 0;
  for (const auto& kv : ts) n += kv.second.numel();
  return n;
}

}  // namespace agate
