// UTF-8 and Unicode helpers for the tokenizer.json backend (internal header). Character
// properties and normalisation come from utf8proc, never from tables of our own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace agate::bpe {

// Decodes the code point at s[i] of valid UTF-8 and returns its byte length.
inline size_t utf8_next(std::string_view s, size_t i, char32_t* cp) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) { *cp = b; return 1; }
  auto c = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  if (b < 0xE0) { *cp = (static_cast<char32_t>(b & 0x1F) << 6) | c(1); return 2; }
  if (b < 0xF0) { *cp = (static_cast<char32_t>(b & 0x0F) << 12) | (c(1) << 6) | c(2); return 3; }
  *cp = (static_cast<char32_t>(b & 0x07) << 18) | (c(1) << 12) | (c(2) << 6) | c(3); return 4;
}

// Byte length of the UTF-8 sequence starting with lead byte b (valid UTF-8 assumed).
inline size_t utf8_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

void utf8_append(std::string& out, char32_t cp);

// True when `s` is well-formed UTF-8.
bool utf8_valid(std::string_view s);
// `s` with every ill-formed subsequence replaced by U+FFFD, one per maximal subpart (the
// Unicode recommendation that Rust's String::from_utf8_lossy and Python's errors="replace" follow).
std::string utf8_lossy(std::string_view s);

enum class Normalization { NFC, NFD, NFKC, NFKD };
// Unicode normalisation of valid UTF-8 (utf8proc).
std::string normalize(std::string_view s, Normalization form);

// The White_Space property: general category Z plus U+0009..U+000D and U+0085 (what Rust's
// char::is_whitespace and str::trim test).
bool is_white_space(char32_t cp);
// General category N (Rust's char::is_numeric).
bool is_numeric(char32_t cp);
// Rust regex's \w: letters, marks, decimal digits, letter numbers, connector punctuation and
// the joiners (Other_Alphabetic symbols such as circled letters are not included).
bool is_word_char(char32_t cp);

}  // namespace agate::bpe
