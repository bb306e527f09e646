// A tiny Llama config for unit tests (header-only).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "agate/model/config.h"

namespace agate::test {

// 2 layers, d 32, GQA `heads`/`kv`; initializer_range 0.2 so attention is far from uniform.
inline ModelConfig tiny_config(int64_t heads = 4, int64_t kv = 2, bool tied = false, int64_t vocab = 61) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = 32 / heads;
  c.tie_word_embeddings = tied;
  c.initializer_range = 0.2;
  c.rms_norm_eps = 1e-5;
  return c;
}

// T token ids in [1, vocab), reproducible from seed (a context or continuation for eval tests).
inline std::vector<int64_t> random_context(int64_t T, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor t = at::randint(1, vocab, {T}, gen, at::kLong);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + T);
}

}  // namespace agate::test
