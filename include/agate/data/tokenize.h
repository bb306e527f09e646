// Text corpora -> token datasets (train and val splits) for continual pre-training (cpt) and
// supervised fine-tuning (sft).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agate/data/dataset.h"

namespace agate {

class Tokenizer;

// How an SFT conversation becomes text. "{content}" is replaced by the message text.
// Tokens of assistant_prefix are context (mask 0); the assistant's content, assistant_suffix
// and the EOS after it are targets (mask 1).
struct SftTemplate {
  std::string system = "{content}\n\n";
  std::string user = "### Instruction:\n{content}\n\n";
  std::string assistant_prefix = "### Response:\n";
  std::string assistant_suffix = "";
  bool end_with_eos = true;  // EOS after each reply (a loss target); false for plain-completion probes


  // "default" (above), "chatml", or a JSON file with any of the four string keys and "eos" (bool).
  static SftTemplate named(const std::string& name_or_file);
};

struct TokenizeOptions {
  std::vector<std::string> inputs;
  std::string out;                    // writes out/train and out/val
  std::string kind = "cpt";           // cpt | sft
  std::string format = "auto";        // auto (.jsonl/.json -> jsonl, else text) | text | jsonl
  std::string text_field = "text";    // cpt jsonl field
  bool add_bos = false;               // prepend BOS to every document
  double val_fraction = 0.01;         // share of documents (by content hash) in val
  uint64_t shard_tokens = 16u << 20;  // tokens per shard (documents never straddle shards)
  int threads = 2;
  SftTemplate sft_template;
  int64_t max_len = 0;                // sft: truncate documents to this many tokens (0 = no limit)
};

struct SplitSummary {
  uint64_t documents = 0, tokens = 0, loss_tokens = 0, shards = 0;
};

struct TokenizeSummary {
  uint64_t input_bytes = 0;
  double seconds = 0;
  SplitSummary train, val;
  std::map<std::string, uint64_t> skipped;    // reason -> documents
  std::map<std::string, uint64_t> truncated;  // rule -> documents
  uint64_t invalid_utf8 = 0;                   // documents whose text was not UTF-8 (bad bytes read as U+FFFD)
};

// Reads, tokenizes (opts.threads workers, order preserved) and writes both splits, each
// manifest last, into a staging folder inside opts.out that replaces opts.out/train and
// opts.out/val only when everything succeeded. Malformed input lines are refused with file:line
// (and the dataset already in opts.out stays as it was).
TokenizeSummary tokenize_corpus(const Tokenizer& tokenizer, const TokenizeOptions& opts);

// One prompt/response pair encoded exactly as `tokenize --kind sft` encodes it (no truncation):
// the context (BOS if add_bos, the user turn, the assistant prefix: mask 0) and the target (the
// response, assistant suffix and EOS: mask 1). Evaluation scores the target after the context.
struct SftPair {
  std::vector<int64_t> context, target;
};
SftPair encode_sft_pair(const Tokenizer& tokenizer, const std::string& prompt, const std::string& response,
                        const SftTemplate& sft_template, bool add_bos);

}  // namespace agate
