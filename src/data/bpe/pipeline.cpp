#include "pipeline.h"

#include <nlohmann/json.hpp>

#include <array>

#include "agate/util/error.h"
#include "regex.h"

namespace agate::bpe {

using nlohmann::json;

namespace {

const char* kFileHint = "the file must be a Hugging Face tokenizers tokenizer.json";
const char* kSupportedHint = "agate reads byte-level BPE tokenizer.json files (GPT-2, SmolLM, Llama 3, Qwen2 families); "
                             "use the model's SentencePiece tokenizer.model instead";

std::string type_of(const json& j, const std::string& where, const std::string& what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    throw_input(where, what + " has no \"type\"", kFileHint);
  }
  return j["type"].get<std::string>();
}

bool flag(const json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return j[key].get<bool>();
}

// (start, end, is_match) pieces covering a string, as tokenizers' Pattern::find_matches gives them.
struct Piece {
  size_t a, b;
  bool match;
};

// tokenizers' SplitDelimiterBehavior.
enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behavior_of(const json& j, const std::string& where) {
  const std::string b = j.value("behavior", std::string("Isolated"));
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  throw_input(where, "Split behavior '" + b + "' is unknown",
              "expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}

// Applies `behavior` to `pieces` (in place), keeping only the non-empty pieces to emit.
void apply_behavior(std::vector<Piece>& pieces, Behavior behavior) {
  std::vector<Piece> out;
  switch (behavior) {
    case Behavior::Isolated:
      break;
    case Behavior::Removed: {
      size_t k = 0;
      for (const Piece& p : pieces)
        if (!p.match) pieces[k++] = p;
      pieces.resize(k);
      break;
    }
    case Behavior::Contiguous: {
      bool previous = false;
      for (const Piece& p : pieces) {
        if (p.match == previous && !out.empty()) out.back().b = p.b;
        else out.push_back({p.a, p.b, false});
        previous = p.match;
      }
      pieces.swap(out);
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool previous = false;
      for (const Piece& p : pieces) {
        if (p.match && !previous && !out.empty()) out.back().b = p.b;
        else out.push_back({p.a, p.b, false});
        previous = p.match;
      }
      pieces.swap(out);
      break;
    }
    case Behavior::MergedWithNext: {
      bool previous = false;
      for (size_t i = pieces.size(); i-- > 0;) {
        const Piece& p = pieces[i];
        if (p.match && !previous && !out.empty()) out.back().a = p.a;
        else out.push_back({p.a, p.b, false});
        previous = p.match;
      }
      pieces.assign(out.rbegin(), out.rend());
      break;
    }
  }
}

// Regex matches -> pieces covering [0, n).
void regex_pieces(const Regex& re, std::string_view s, std::vector<std::pair<size_t, size_t>>& m,
                  std::vector<Piece>& pieces) {
  m.clear();
  pieces.clear();
  re.find_all(s, m);
  size_t prev = 0;
  for (const auto& [a, b] : m) {
    if (prev != a) pieces.push_back({prev, a, false});
    pieces.push_back({a, b, true});
    prev = b;
  }
  if (prev != s.size()) pieces.push_back({prev, s.size(), false});
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Normalizer

Normalizer::Normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return;
  const std::string t = type_of(j, where, "normalizer");
  if (t == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array()) throw_input(where, "Sequence normalizer has no \"normalizers\" list", kFileHint);
    for (const json& n : j["normalizers"]) {
      Normalizer inner(n, where);
      forms_.insert(forms_.end(), inner.forms_.begin(), inner.forms_.end());
    }
  } else if (t == "NFC") {
    forms_.push_back(Normalization::NFC);
  } else if (t == "NFD") {
    forms_.push_back(Normalization::NFD);
  } else if (t == "NFKC") {
    forms_.push_back(Normalization::NFKC);
  } else if (t == "NFKD") {
    forms_.push_back(Normalization::NFKD);
  } else {
    throw_input(where, "normalizer type '" + t + "' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)", kSupportedHint);
  }
}

std::string Normalizer::apply(std::string_view s) const {
  std::string out(s);
  for (Normalization f : forms_) out = normalize(out, f);
  return out;
}

// ---------------------------------------------------------------------------------------------
// PreTokenizer

struct PreTokenizer::Step {
  enum class Kind { Split, Digits, ByteLevel } kind = Kind::Split;
  std::unique_ptr<Regex> regex;  // Split; ByteLevel with use_regex
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;
  bool individual_digits = false;
};

namespace {

// GPT-2's pattern, which ByteLevel applies when use_regex is set.
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void parse_pre_tokenizer(const json& j, const std::string& where, std::vector<PreTokenizer::Step>& steps) {
  using Step = PreTokenizer::Step;
  const std::string t = type_of(j, where, "pre_tokenizer");
  if (t == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) throw_input(where, "Sequence pre_tokenizer has no \"pretokenizers\" list", kFileHint);
    for (const json& p : j["pretokenizers"]) parse_pre_tokenizer(p, where, steps);
    return;
  }
  Step s;
  if (t == "ByteLevel") {
    s.kind = Step::Kind::ByteLevel;
    s.add_prefix_space = flag(j, "add_prefix_space", true);
    if (flag(j, "use_regex", true)) s.regex = std::make_unique<Regex>(kGpt2Pattern, false, where);
  } else if (t == "Split") {
    s.kind = Step::Kind::Split;
    if (!j.contains("pattern") || !j["pattern"].is_object()) throw_input(where, "Split pre_tokenizer has no \"pattern\" object", kFileHint);
    const json& p = j["pattern"];
    const bool literal = p.contains("String");
    if (!literal && !p.contains("Regex")) throw_input(where, "Split pattern must be {\"String\": ...} or {\"Regex\": ...}", kFileHint);
    const std::string text = p[literal ? "String" : "Regex"].get<std::string>();
    if (text.empty()) throw_input(where, "Split pattern is empty", "give the Split step a pattern");
    s.regex = std::make_unique<Regex>(text, literal, where);
    s.behavior = behavior_of(j, where);
    s.invert = flag(j, "invert", false);
  } else if (t == "Digits") {
    s.kind = Step::Kind::Digits;
    s.individual_digits = flag(j, "individual_digits", false);
  } else {
    throw_input(where, "pre_tokenizer type '" + t + "' is not supported (supported: ByteLevel, Split, Digits, Sequence)",
                kSupportedHint);
  }
  steps.push_back(std::move(s));
}

// Scratch space of one pre-tokenizer depth, reused by every call on this thread.
struct Scratch {
  std::vector<std::pair<size_t, size_t>> matches;
  std::vector<Piece> pieces;
  std::string prefixed;
};

std::vector<Scratch>& scratch() {
  thread_local std::vector<Scratch> s;
  return s;
}

}  // namespace

PreTokenizer::PreTokenizer(const json& j, const std::string& where) {
  if (j.is_null()) {
    throw_input(where, "has no pre_tokenizer, so it is not a byte-level BPE", kSupportedHint);
  }
  parse_pre_tokenizer(j, where, steps_);
  size_t byte_level = 0;
  for (const Step& s : steps_) byte_level += s.kind == Step::Kind::ByteLevel;
  if (byte_level != 1 || steps_.back().kind != Step::Kind::ByteLevel) {
    throw_input(where, "the pre_tokenizer must end in exactly one ByteLevel step (a byte-level BPE)", kSupportedHint);
  }
}

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;

void PreTokenizer::run(std::string_view text, WordSink& sink) const {
  if (scratch().size() < steps_.size()) scratch().resize(steps_.size());
  run_step(0, text, sink);
}

void PreTokenizer::run_step(size_t i, std::string_view piece, WordSink& sink) const {
  if (piece.empty()) return;
  if (i == steps_.size()) {
    sink.word(piece);
    return;
  }
  const Step& step = steps_[i];
  Scratch& sc = scratch()[i];
  switch (step.kind) {
    case Step::Kind::ByteLevel: {
      std::string_view p = piece;
      if (step.add_prefix_space && p[0] != ' ') {
        sc.prefixed.assign(1, ' ');
        sc.prefixed.append(piece);
        p = sc.prefixed;
      }
      if (!step.regex) {
        run_step(i + 1, p, sink);
        return;
      }
      sc.matches.clear();
      step.regex->find_all(p, sc.matches);
      // Isolated: the matches and the gaps between them, in order.
      size_t prev = 0;
      for (const auto& [a, b] : sc.matches) {
        if (prev != a) run_step(i + 1, p.substr(prev, a - prev), sink);
        run_step(i + 1, p.substr(a, b - a), sink);
        prev = b;
      }
      if (prev != p.size()) run_step(i + 1, p.substr(prev), sink);
      return;
    }
    case Step::Kind::Split: {
      regex_pieces(*step.regex, piece, sc.matches, sc.pieces);
      if (step.invert)
        for (Piece& q : sc.pieces) q.match = !q.match;
      break;
    }
    case Step::Kind::Digits: {
      sc.pieces.clear();
      size_t last = 0;
      for (size_t k = 0; k < piece.size();) {
        char32_t cp;
        const size_t n = utf8_next(piece, k, &cp);
        if (is_numeric(cp)) {
          if (last < k) sc.pieces.push_back({last, k, false});
          sc.pieces.push_back({k, k + n, true});
          last = k + n;
        }
        k += n;
      }
      if (last < piece.size()) sc.pieces.push_back({last, piece.size(), false});
      break;
    }
  }
  apply_behavior(sc.pieces, step.kind == Step::Kind::Digits
                                ? (step.individual_digits ? Behavior::Isolated : Behavior::Contiguous)
                                : step.behavior);
  // Deeper steps use the scratch slots of their own depths (run() sized the list), so this
  // depth's pieces stay intact while they run.
  for (const Piece& q : sc.pieces) run_step(i + 1, piece.substr(q.a, q.b - q.a), sink);
}

// ---------------------------------------------------------------------------------------------
// Decoder

struct Decoder::Step {
  enum class Kind { ByteLevel, ByteFallback, Fuse, Replace, Strip } kind = Kind::Fuse;
  std::unique_ptr<Regex> regex;  // Replace
  std::string content;           // Replace: the replacement; Strip: the character
  size_t start = 0, stop = 0;    // Strip
};

namespace {

std::array<std::string, 256> make_byte_chars() {
  std::array<std::string, 256> out;
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = printable[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    utf8_append(out[b], cp);
  }
  return out;
}

// Inverse of byte_char: code point -> byte, -1 where none.
const std::array<int, 512>& char_bytes() {
  static const std::array<int, 512> table = [] {
    std::array<int, 512> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) {
      char32_t cp;
      utf8_next(byte_char(static_cast<unsigned char>(b)), 0, &cp);
      t[cp] = b;
    }
    return t;
  }();
  return table;
}

void parse_decoder(const json& j, const std::string& where, std::vector<Decoder::Step>& steps) {
  using Step = Decoder::Step;
  const std::string t = type_of(j, where, "decoder");
  if (t == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array()) throw_input(where, "Sequence decoder has no \"decoders\" list", kFileHint);
    for (const json& d : j["decoders"]) parse_decoder(d, where, steps);
    return;
  }
  Step s;
  if (t == "ByteLevel") {
    s.kind = Step::Kind::ByteLevel;
  } else if (t == "ByteFallback") {
    s.kind = Step::Kind::ByteFallback;
  } else if (t == "Fuse") {
    s.kind = Step::Kind::Fuse;
  } else if (t == "Replace") {
    s.kind = Step::Kind::Replace;
    const json& p = j.at("pattern");
    const bool literal = p.contains("String");
    const std::string text = p.at(literal ? "String" : "Regex").get<std::string>();
    if (text.empty()) throw_input(where, "Replace decoder has an empty pattern", kFileHint);
    s.regex = std::make_unique<Regex>(text, literal, where);
    s.content = j.at("content").get<std::string>();
  } else if (t == "Strip") {
    s.kind = Step::Kind::Strip;
    s.content = j.at("content").get<std::string>();
    s.start = j.value("start", size_t{0});
    s.stop = j.value("stop", size_t{0});
  } else {
    throw_input(where, "decoder type '" + t + "' is not supported (supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, Sequence)",
                kSupportedHint);
  }
  steps.push_back(std::move(s));
}

// ByteFallback: "<0xAB>" tokens become bytes; runs of them are one string if valid UTF-8,
// else one U+FFFD per byte.
std::vector<std::string> byte_fallback(std::vector<std::string> tokens) {
  std::vector<std::string> out;
  std::string bytes;
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  auto flush = [&] {
    if (bytes.empty()) return;
    if (utf8_valid(bytes)) out.push_back(bytes);
    else
      for (size_t k = 0; k < bytes.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
    bytes.clear();
  };
  for (std::string& t : tokens) {
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hex(t[3]) >= 0 && hex(t[4]) >= 0) {
      bytes += static_cast<char>(hex(t[3]) * 16 + hex(t[4]));
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  return out;
}

std::string byte_level(const std::vector<std::string>& tokens) {
  const auto& table = char_bytes();
  std::string bytes;
  for (const std::string& t : tokens) {
    const size_t mark = bytes.size();
    bool all = true;
    for (size_t k = 0; k < t.size();) {
      char32_t cp;
      k += utf8_next(t, k, &cp);
      if (cp >= table.size() || table[cp] < 0) {
        all = false;
        break;
      }
      bytes += static_cast<char>(table[cp]);
    }
    if (!all) {  // a token with any character outside the byte alphabet passes through as is
      bytes.resize(mark);
      bytes += t;
    }
  }
  return utf8_lossy(bytes);
}

std::string strip(const std::string& t, const std::string& content, size_t start, size_t stop) {
  std::vector<std::pair<size_t, size_t>> chars;  // byte ranges of the characters
  for (size_t k = 0; k < t.size();) {
    char32_t cp;
    const size_t n = utf8_next(t, k, &cp);
    chars.emplace_back(k, n);
    k += n;
  }
  auto is_content = [&](size_t i) { return t.compare(chars[i].first, chars[i].second, content) == 0; };
  size_t start_cut = 0, stop_cut = chars.size();
  for (size_t i = 0; i < std::min(start, chars.size()) && is_content(i); ++i) start_cut = i + 1;
  for (size_t i = 0; i < std::min(stop, chars.size()) && is_content(chars.size() - i - 1); ++i) stop_cut = chars.size() - i - 1;
  if (start_cut >= stop_cut) return "";
  const size_t a = chars[start_cut].first, b = stop_cut == chars.size() ? t.size() : chars[stop_cut].first;
  return t.substr(a, b - a);
}

}  // namespace

const std::string& byte_char(unsigned char b) {
  static const std::array<std::string, 256> table = make_byte_chars();
  return table[b];
}

Decoder::Decoder(const json& j, const std::string& where) {
  if (j.is_null()) {
    none_ = true;
    return;
  }
  parse_decoder(j, where, steps_);
}

Decoder::~Decoder() = default;
Decoder::Decoder(Decoder&&) noexcept = default;

std::string Decoder::decode(std::vector<std::string> tokens) const {
  std::string out;
  if (none_) {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Step& s : steps_) {
    switch (s.kind) {
      case Step::Kind::ByteLevel: tokens = {byte_level(tokens)}; break;
      case Step::Kind::ByteFallback: tokens = byte_fallback(std::move(tokens)); break;
      case Step::Kind::Fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case Step::Kind::Replace: {
        std::vector<std::pair<size_t, size_t>> m;
        for (std::string& t : tokens) {
          m.clear();
          s.regex->find_all(t, m);
          if (m.empty()) continue;
          std::string r;
          size_t prev = 0;
          for (const auto& [a, b] : m) {
            r.append(t, prev, a - prev);
            r += s.content;
            prev = b;
          }
          r.append(t, prev, std::string::npos);
          t = std::move(r);
        }
        break;
      }
      case Step::Kind::Strip:
        for (std::string& t : tokens) t = strip(t, s.content, s.start, s.stop);
        break;
    }
  }
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace agate::bpe
