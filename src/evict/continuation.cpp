// Teacher-forced continuation over a compressed context (eval's scoring, score --policy).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "agate/evict/policy.h"
#include "agate/model/llama.h"

namespace agate::evict {

at::Tensor continuation_logits(const LlamaModel& model, ProjectionAdapter* adapter, const Compressed& c,
                               const std::vector<int64_t>& continuation) {
  c10::InferenceMode guard;
  at::Tensor logits = c.last_logits.unsqueeze(0);  // [1, V]
  if (continuation.size() > 1) {
    RaggedKVCache cache = *c.cache;
    ForwardOptions fo;
    fo.cache = &cache;
    fo.adapter = adapter;
    at::Tensor inputs =
        at::tensor(std::vector<int64_t>(continuation.begin(), continuation.end() - 1), at::kLong).unsqueeze(0);
    logits = at::cat({logits, model.forward(inputs, fo)[0].to(at::kFloat)});  // [n, V]
  }
  return logits;
}

}  // namespace agate::evict
