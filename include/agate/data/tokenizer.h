// Text <-> token ids. Two backends: SentencePiece `.model` files and Hugging Face byte-level BPE
// `tokenizer.json` files (GPT-2, SmolLM, Llama 3, Qwen2 families); token shards themselves are
// tokenizer-agnostic (any tool may write them, see docs/formats.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace agate {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text without adding BOS/EOS.
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual std::string piece(int32_t id) const = 0;

  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when the tokenizer has none
  virtual int32_t eos_id() const = 0;
  // The special ids that transformers' tokenizer(text) puts around one text (add_special_tokens=
  // True). tokenizer.json: what its post_processor adds (BOS when a TemplateProcessing puts it
  // first; nothing for ByteLevel or none, even when tokenizer_config.json names a bos_token), as
  // transformers 5 reads it. SentencePiece: BOS when the model has one (the Llama convention).
  struct Specials {
    std::vector<int32_t> prefix, suffix;
  };
  virtual Specials specials() const = 0;
  // Fingerprint stored in every shard so data cannot feed a model with another vocabulary:
  // CRC-32 of the tokenizer file's bytes.
  virtual uint64_t hash() const = 0;

  // Loads a tokenizer: a path ending in `.json` is a Hugging Face tokenizer.json (byte-level
  // BPE, encoded exactly as tokenizers' encode(text, add_special_tokens=False)), anything else a
  // SentencePiece `.model` file. tokenizer.json: bos/eos come from bos_token/eos_token of a
  // tokenizer_config.json beside it; without one, no BOS and EOS = <|endoftext|> when present.
  static std::unique_ptr<Tokenizer> load(const std::string& path);
};

// A prompt's ids (generate --prompt, score --text): specials().prefix, then encode(text). The
// suffix (an EOS some templates append) is left off: the model continues after a prompt.
std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& text);

// The tokenizer of a model folder: DIR/tokenizer.json when it exists and agate reads its kind,
// else DIR/tokenizer.model (or DIR/tokenizer.json when neither is usable, so that loading it
// says why).
std::string default_tokenizer_path(const std::string& model_dir);

// Refuses (input error naming `path`) a tokenizer with more ids than the model has embeddings:
// its text could encode to ids the model cannot read. A smaller tokenizer is fine (models pad
// their embedding tables, e.g. Qwen2's 151,936 rows for 151,665 tokens).
void check_tokenizer_fits(const Tokenizer& tok, const std::string& path, int64_t model_vocab);

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;  // text files, one sentence/paragraph per line
  std::string out;                  // output path, e.g. tok.model (a .vocab file goes beside it)
  int64_t vocab_size = 8192;
  std::string model_type = "bpe";   // bpe | unigram
  bool byte_fallback = true;        // unseen characters become bytes, so any text round-trips
  double character_coverage = 1.0;
  int64_t max_sentences = 2000000;  // sampled when inputs hold more lines
  int threads = 2;
};

// Trains a SentencePiece model (unk 0, bos 1, eos 2, no pad) and writes it to options.out.
void train_tokenizer(const TokenizerTrainOptions& options);

}  // namespace agate
