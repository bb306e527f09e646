#include "agate/model/score.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "agate/model/llama.h"
#include "agate/util/error.h"

namespace agate {

TokenScores score_tokens(const LlamaModel& model, const std::vector<int64_t>& tokens) {
  if (tokens.size() < 2) throw_usage("need at least 2 tokens to score", "pass --tokens a,b,...");
  c10::InferenceMode inference;
  at::Tensor ids = at::tensor(tokens, at::kLong).unsqueeze(0);                     // [1, T]
  at::Tensor logp = at::log_softmax(model.forward(ids).to(at::kFloat), -1)[0];     // [T, V] on the model's device
  at::Tensor next = ids[0].slice(0, 1).unsqueeze(1).to(logp.device());             // [T-1, 1]
  at::Tensor picked = logp.slice(0, 0, logp.size(0) - 1).gather(1, next).squeeze(1).to(at::kCPU, at::kDouble);
  TokenScores s;
  s.tokens = tokens;
  auto acc = picked.accessor<double, 1>();
  for (int64_t t = 0; t < picked.size(0); ++t) {
    s.logprobs.push_back(acc[t]);
    s.total += acc[t];
  }
  return s;
}

}  // namespace agate
