// The tokenizer.json backend of agate::Tokenizer (internal header): byte-level BPE as Hugging
// Face tokenizers defines it (GPT-2, SmolLM, Llama 3, Qwen2 families).
#pragma once

#include <memory>
#include <string>

#include "agate/data/tokenizer.h"

namespace agate {

// Reads a tokenizer.json; refuses (agate::Error, Input) what it cannot encode exactly.
std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& path);

// "" when load_bpe_tokenizer would read `path`, else the one-line reason it would refuse it.
std::string bpe_tokenizer_problem(const std::string& path);

}  // namespace agate
