// Scoring token sequences with a model: per-token log-probabilities.
#pragma once

#include <cstdint>
#include <vector>

namespace agate {

class LlamaModel;

struct TokenScores {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;  // logprobs[t] = log p(tokens[t+1] | tokens[0..t]); size T-1
  double total = 0.0;
};

// Runs one forward (no gradient) over `tokens` (at least 2) and scores every next token.
TokenScores score_tokens(const LlamaModel& model, const std::vector<int64_t>& tokens);

}  // namespace agate
