#include "agate/infer/generate.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <sstream>

#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/model/ragged_kv_cache.h"
#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "agate/util/timer.h"

namespace agate {

namespace {

// logits: [V] float32 -> next id (greedy, or temperature + top-p sampling).
int64_t pick(const at::Tensor& logits, const GenerateOptions& o, at::Generator& gen) {
  if (o.temperature <= 0) return logits.argmax().item<int64_t>();
  at::Tensor probs = at::softmax(logits / o.temperature, -1);
  if (o.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    at::Tensor cum = sorted.cumsum(-1);
    at::Tensor drop = (cum - sorted) > o.top_p;  // keep the smallest prefix reaching top_p
    sorted.masked_fill_(drop, 0.0);
    probs = at::zeros_like(probs).scatter_(0, idx, sorted);
  }
  return at::multinomial(probs, 1, false, gen).item<int64_t>();
}

}  // namespace

GenerateResult generate(const LlamaModel& model, const evict::Policy& policy, const std::vector<int64_t>& layer_budgets,
                        const std::vector<int64_t>& prompt, const GenerateOptions& o) {
  if (prompt.empty()) throw_usage("generate needs a prompt of at least one token");
  if (o.max_new < 0) throw_usage("--max-new must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1)) throw_usage("--top-p must be in (0, 1]");  // NaN fails too
  // Below 1e-3 the scaled logits overflow the softmax; 0 is greedy.
  if (!(o.temperature == 0 || (o.temperature >= 1e-3 && o.temperature <= 1e3))) {
    std::ostringstream m;
    m << "--temperature must be 0 (greedy) or in [0.001, 1000], got " << o.temperature;
    throw_usage(m.str(), "0 picks the likeliest token; 0.7-1.0 samples");
  }
  c10::InferenceMode guard;
  const ModelConfig& c = model.config();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  GenerateResult res;
  res.prompt_tokens = static_cast<int64_t>(prompt.size());

  evict::Compressed cmp = policy.compress(model, o.adapter, prompt, layer_budgets);
  RaggedKVCache& cache = *cmp.cache;
  res.prefill_tokens_per_s = static_cast<double>(prompt.size()) / std::max(cmp.prefill_seconds + cmp.select_seconds, 1e-9);
  // What each layer/head kept of the prompt: one read per layer.
  for (const at::Tensor& layer : cmp.kept) {
    const at::Tensor f = layer.to(at::kCPU).contiguous();  // [T, Hkv] bool
    auto fa = f.accessor<bool, 2>();
    std::vector<std::vector<bool>> heads(static_cast<size_t>(f.size(1)), std::vector<bool>(prompt.size()));
    for (int64_t g = 0; g < f.size(1); ++g)
      for (int64_t p = 0; p < f.size(0); ++p) heads[static_cast<size_t>(g)][static_cast<size_t>(p)] = fa[p][g];
    res.kept.push_back(std::move(heads));
  }

  ForwardOptions decode;
  decode.cache = &cache;
  decode.visibility = policy.decode_visibility();  // null: every decoded token is kept
  decode.adapter = o.adapter;
  const double t1 = now_seconds();
  // Logits come to the host once per token (the next id is needed there, for stop tokens and
  // printing); sampling runs on the CPU, so a seed gives the same text on every device.
  at::Tensor last = cmp.last_logits.to(at::kCPU, at::kFloat);
  for (int64_t i = 0; i < o.max_new; ++i) {
    const int64_t next = pick(last, o, gen);
    res.tokens.push_back(next);
    if (o.on_token) o.on_token(next);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) break;
    if (i + 1 == o.max_new) break;
    last = model.forward(at::full({1, 1}, next, at::kLong), decode)[0][-1].to(at::kCPU, at::kFloat);
  }
  const double dt = now_seconds() - t1;
  // The first new token comes from the prefill's logits: the decode made tokens - 1 forwards.
  const int64_t forwards = std::max<int64_t>(0, static_cast<int64_t>(res.tokens.size()) - 1);
  res.decode_tokens_per_s = forwards == 0 ? 0 : static_cast<double>(forwards) / std::max(dt, 1e-9);
  res.kv_entries = cache.total_entries();
  res.kv_entries_full = cache.length() * c.num_hidden_layers * c.num_key_value_heads;
  const int64_t per_entry = c.head_dim * 2 * (model.dtype() == at::kBFloat16 ? 2 : 4);
  res.kv_bytes = cache.bytes();
  res.kv_bytes_full = res.kv_entries_full * per_entry;
  return res;
}

GenerateResult generate(const LlamaModel& model, Gates* gates, const std::vector<int64_t>& prompt,
                        const GenerateOptions& o) {
  const std::unique_ptr<evict::Policy> policy =
      gates ? evict::gate_policy(gates, false, o.gate_decode) : evict::make_policy("full", evict::PolicyOptions());
  GenerateResult res = generate(model, *policy, std::vector<int64_t>(static_cast<size_t>(model.config().num_hidden_layers), 0),
                                prompt, o);
  if (gates) gates->set_decode_cache(false);
  return res;
}

}  // namespace agate
