// The stages of a tokenizer.json around its BPE model (internal header): the normalizer, the
// pre-tokenizer and the decoder, each read from its JSON object and run as Hugging Face
// tokenizers runs it. What is not implemented is refused when the file is read.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "unicode.h"

namespace agate::bpe {

class Regex;

// "normalizer": null, NFC, NFD, NFKC, NFKD or a Sequence of them.
class Normalizer {
 public:
  Normalizer() = default;
  Normalizer(const nlohmann::json& j, const std::string& where);
  bool empty() const { return forms_.empty(); }
  std::string apply(std::string_view s) const;

 private:
  std::vector<Normalization> forms_;
};

// Receives the pre-tokens ("words") that the pre-tokenizer produces, in order.
class WordSink {
 public:
  virtual ~WordSink() = default;
  virtual void word(std::string_view w) = 0;
};

// "pre_tokenizer": ByteLevel, or a Sequence of Split / Digits steps ending in ByteLevel. The
// byte-to-character mapping of ByteLevel is left to the model (it sees the raw bytes).
class PreTokenizer {
 public:
  PreTokenizer(const nlohmann::json& j, const std::string& where);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  void run(std::string_view text, WordSink& sink) const;

  struct Step;

 private:
  void run_step(size_t i, std::string_view piece, WordSink& sink) const;
  std::vector<Step> steps_;
};

// "decoder": ByteLevel, ByteFallback, Fuse, Replace, Strip or a Sequence of them; null joins
// the tokens with spaces, as tokenizers does.
class Decoder {
 public:
  Decoder(const nlohmann::json& j, const std::string& where);
  ~Decoder();
  Decoder(Decoder&&) noexcept;
  std::string decode(std::vector<std::string> tokens) const;

  struct Step;

 private:
  std::vector<Step> steps_;
  bool none_ = false;
};

// GPT-2's bytes_to_unicode: the printable character standing for each byte (UTF-8).
const std::string& byte_char(unsigned char b);

}  // namespace agate::bpe
