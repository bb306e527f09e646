// Text generation over the ragged KV cache: an eviction policy compresses the prompt (the
// gates during their prefill, a training-free policy after a full one: evict::Policy), then
// decoding appends new tokens, all of them or (the gates' decode gating) only those they keep.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace agate {

class LlamaModel;
class Gates;
class ProjectionAdapter;
namespace evict {
class Policy;
}

struct GenerateOptions {
  int64_t max_new = 64;
  double temperature = 0.0;  // 0 = greedy
  double top_p = 1.0;        // nucleus sampling when temperature > 0
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // generation stops after any of these (e.g. EOS)
  bool gate_decode = false;       // generate(gates): also gate decoded tokens (the gate keeps its own cache)
  ProjectionAdapter* adapter = nullptr;      // e.g. an export's LoRA, applied in the prefill and every decode step
  std::function<void(int64_t)> on_token;     // called with each new id as soon as it is chosen (streaming)
};

struct GenerateResult {
  std::vector<int64_t> tokens;          // generated ids (prompt excluded)
  int64_t prompt_tokens = 0;
  int64_t kv_entries = 0, kv_entries_full = 0;  // stored vs a full cache, after generation
  int64_t kv_bytes = 0, kv_bytes_full = 0;
  double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;  // prefill: the policy's prefill + selection;
                                                             // decode: the tokens - 1 forwards after it
  // kept[layer][kv_head][prompt position]: what the policy kept of the prompt (what
  // --show-evictions draws and --flags-out writes).
  std::vector<std::vector<std::vector<bool>>> kept;
};

// prompt: token ids (at least 1), compressed by `policy` with one budget per layer (see
// evict::Policy; ignored by full and the gates); decoding follows policy.decode_visibility().
GenerateResult generate(const LlamaModel& model, const evict::Policy& policy, const std::vector<int64_t>& layer_budgets,
                        const std::vector<int64_t>& prompt, const GenerateOptions& options);
// The gates' policy (options.gate_decode: with decode gating), or with gates null the full cache.
GenerateResult generate(const LlamaModel& model, Gates* gates, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options);

}  // namespace agate
