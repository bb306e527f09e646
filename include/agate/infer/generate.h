// Text generation over the ragged KV cache: a gated prefill keeps only the flagged entries per
// KV head; decoding appends new tokens, all of them or (gate_decode) only those the gate keeps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace agate {

class LlamaModel;
class Gates;

struct GenerateOptions {
  int64_t max_new = 64;
  double temperature = 0.0;  // 0 = greedy
  double top_p = 1.0;        // nucleus sampling when temperature > 0
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // generation stops after any of these (e.g. EOS)
  bool gate_decode = false;       // also gate decoded tokens (the gate keeps its own cache)
};

struct GenerateResult {
  std::vector<int64_t> tokens;          // generated ids (prompt excluded)
  int64_t prompt_tokens = 0;
  int64_t kv_entries = 0, kv_entries_full = 0;  // stored vs a full cache, after generation
  int64_t kv_bytes = 0, kv_bytes_full = 0;
  double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;
  // kept[layer][kv_head][prompt position]: the gates' prefill flags (what --show-evictions draws).
  std::vector<std::vector<std::vector<bool>>> kept;
};

// prompt: token ids (at least 1). gates may be null (full cache).
GenerateResult generate(const LlamaModel& model, Gates* gates, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options);

}  // namespace agate
