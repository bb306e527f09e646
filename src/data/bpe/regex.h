// The regular expressions of tokenizer.json (Split pre-tokenizers, Replace decoders) on PCRE2
// in UTF + UCP mode, JIT-compiled when the platform allows (internal header).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace agate::bpe {

class Regex {
 public:
  // `pattern` is in the syntax Hugging Face tokenizers hands to Oniguruma. The few escapes whose
  // meaning differs in PCRE2 are rewritten to Oniguruma's (\s, \S: White_Space; \w, \W: letters,
  // marks, numbers and connector punctuation; \h, \H: hex digits). `literal` matches the text as
  // is. Throws agate::Error (Input, naming `where`) when the pattern does not compile.
  Regex(const std::string& pattern, bool literal, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [start, end) byte offsets of every match in `s` (valid UTF-8), found left to
  // right as tokenizers' find_iter does (an empty match right after a match is skipped).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;
  bool jit() const { return jit_; }

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// The Oniguruma-to-PCRE2 rewrite of a pattern (exposed for the tests).
std::string pcre2_pattern(const std::string& onig_pattern, const std::string& where);

}  // namespace agate::bpe
