// tokenizer.json encoding follows tokenizers' TokenizerImpl::encode(text, add_special_tokens =
// false): added tokens are cut out of the raw text first (AddedVocabulary::extract_and_normalize),
// the rest is normalized, pre-tokenized and run through the BPE model word by word.
#include "bpe_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "bpe/model.h"
#include "bpe/pipeline.h"
#include "bpe/post_processor.h"
#include "bpe/unicode.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace agate {

namespace {

using bpe::BpeModel;
using bpe::Decoder;
using bpe::Normalizer;
using bpe::PreTokenizer;

const char* kHint = "agate reads byte-level BPE tokenizer.json files (GPT-2, SmolLM, Llama 3, Qwen2 families); "
                    "use the model's SentencePiece tokenizer.model instead";

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest matching of a set of strings (the aho-corasick MatchKind::LeftmostLongest
// that tokenizers uses), as a byte trie.
class TokenTrie {
 public:
  void add(const std::string& s, int32_t id) {
    if (s.empty()) return;
    int node = 0;
    for (unsigned char c : s) {
      auto& kids = nodes_[static_cast<size_t>(node)].kids;
      auto it = kids.find(c);
      if (it == kids.end()) {
        nodes_.push_back({});
        it = nodes_[static_cast<size_t>(node)].kids.emplace(c, static_cast<int>(nodes_.size()) - 1).first;
      }
      node = it->second;
    }
    if (nodes_[static_cast<size_t>(node)].id < 0) nodes_[static_cast<size_t>(node)].id = id;  // the first of duplicates
    first_[static_cast<unsigned char>(s[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }
  // The leftmost match at or after `from`, longest there: true with [*a, *b) and its id.
  bool find(std::string_view s, size_t from, size_t* a, size_t* b, int32_t* id) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<unsigned char>(s[i])]) continue;
      int node = 0;
      size_t best = 0;
      for (size_t k = i; k < s.size(); ++k) {
        const auto& kids = nodes_[static_cast<size_t>(node)].kids;
        const auto it = kids.find(static_cast<unsigned char>(s[k]));
        if (it == kids.end()) break;
        node = it->second;
        if (nodes_[static_cast<size_t>(node)].id >= 0) {
          best = k + 1;
          *id = nodes_[static_cast<size_t>(node)].id;
        }
      }
      if (best) {
        *a = i;
        *b = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::unordered_map<unsigned char, int> kids;
    int32_t id = -1;
  };
  std::vector<Node> nodes_{Node{}};
  bool first_[256] = {};
};

// Length of the whitespace run that ends `s` / starts `s` (Rust's \s: White_Space).
size_t trailing_space_start(std::string_view s) {
  size_t start = s.size();
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    const size_t n = bpe::utf8_next(s, i, &cp);
    if (!bpe::is_white_space(cp)) start = s.size();
    else if (start == s.size()) start = i;
    i += n;
  }
  return start;
}
size_t leading_space_end(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    char32_t cp;
    const size_t n = bpe::utf8_next(s, i, &cp);
    if (!bpe::is_white_space(cp)) break;
    i += n;
  }
  return i;
}
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  char32_t cp;
  bpe::utf8_next(s, i, &cp);
  return bpe::is_word_char(cp);
}
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  char32_t cp;
  bpe::utf8_next(s, 0, &cp);
  return bpe::is_word_char(cp);
}

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(const std::string& path, const json& j)
      : path_(path),
        normalizer_(j.contains("normalizer") ? j["normalizer"] : json(), path),
        pre_(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), path),
        model_(j["model"], path),
        decoder_(j.contains("decoder") ? j["decoder"] : json(), path),
        post_(j.contains("post_processor") ? j["post_processor"] : json(), path) {
    read_added_tokens(j);
    int32_t max_id = model_.max_id();
    for (const auto& [id, t] : added_by_id_) max_id = std::max(max_id, id);
    vocab_ = max_id + 1;
    for (const auto* ids : {&post_.prefix, &post_.suffix}) {
      for (int32_t id : *ids) {
        if (id >= vocab_) {
          throw_input(path, "post_processor adds token id " + std::to_string(id) + ", outside the vocabulary (0.." +
                                std::to_string(vocab_ - 1) + ")", "the file must be a Hugging Face tokenizers tokenizer.json");
        }
      }
    }
    read_special_ids();
    hash_ = crc32_file(path);
  }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::string fixed;
    std::string_view t = text;
    if (!bpe::utf8_valid(t)) {  // tokenizers takes str: ill-formed bytes become U+FFFD first
      fixed = bpe::utf8_lossy(t);
      t = fixed;
    }
    std::vector<int32_t> ids;
    ids.reserve(t.size() / 3 + 8);
    ModelSink sink(model_, ids);
    split_added(t, raw_trie_, [&](std::string_view piece, int32_t id) {
      if (id >= 0) {
        ids.push_back(id);
        return;
      }
      std::string norm;
      if (!normalizer_.empty()) {
        norm = normalizer_.apply(piece);
        piece = norm;
      }
      if (normalized_trie_.empty()) {
        pre_.run(piece, sink);
        return;
      }
      split_added(piece, normalized_trie_, [&](std::string_view q, int32_t id2) {
        if (id2 >= 0) ids.push_back(id2);
        else pre_.run(q, sink);
      });
    });
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      const std::string* t = token_of(id);
      if (!t) throw_input("decode", "token id " + std::to_string(id) + " is outside the vocabulary",
                          "the tokenizer has ids 0.." + std::to_string(vocab_ - 1));
      tokens.push_back(*t);
    }
    return decoder_.decode(std::move(tokens));
  }

  std::string piece(int32_t id) const override {
    const std::string* t = token_of(id);
    return t ? *t : "<out-of-vocab " + std::to_string(id) + ">";
  }

  int64_t vocab_size() const override { return vocab_; }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  Specials specials() const override { return {post_.prefix, post_.suffix}; }
  uint64_t hash() const override { return hash_; }

 private:
  struct ModelSink : bpe::WordSink {
    ModelSink(const BpeModel& m, std::vector<int32_t>& o) : model(m), out(o) {}
    void word(std::string_view w) override { model.encode_word(w, out); }
    const BpeModel& model;
    std::vector<int32_t>& out;
  };

  const std::string* token_of(int32_t id) const {
    const auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) return &it->second.content;
    return model_.id_to_token(id);
  }

  int32_t id_of(const std::string& token) const {
    const auto it = added_ids_.find(token);
    return it != added_ids_.end() ? it->second : model_.token_to_id(token);
  }

  // tokenizers' deserialisation: AddedVocabulary::add_tokens over "added_tokens" in file order.
  // An added token that is in the model's vocabulary takes that id; others take the next id
  // after the vocabulary (the file's own "id" only draws a warning there when it differs).
  void read_added_tokens(const json& j) {
    if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return;
    if (!j["added_tokens"].is_array()) throw_input(path_, "\"added_tokens\" is not a list", "pass a Hugging Face tokenizer.json");
    std::vector<AddedToken> specials, classics;
    std::unordered_set<std::string> special_set;
    int32_t next_id = static_cast<int32_t>(model_.size());
    for (const json& e : j["added_tokens"]) {
      AddedToken t;
      t.content = e.at("content").get<std::string>();
      t.single_word = e.value("single_word", false);
      t.lstrip = e.value("lstrip", false);
      t.rstrip = e.value("rstrip", false);
      t.special = e.value("special", false);
      t.normalized = e.value("normalized", !t.special);
      if (t.content.empty()) continue;
      if (t.special && special_set.insert(t.content).second) specials.push_back(t);
      int32_t id = id_of(t.content);
      if (id < 0) id = next_id++;
      added_ids_[t.content] = id;
      added_by_id_[id] = t;
      if (!special_set.count(t.content)) classics.push_back(t);
    }
    for (const auto* list : {&specials, &classics}) {
      for (const AddedToken& t : *list) {
        if (t.normalized) normalized_trie_.add(normalizer_.empty() ? t.content : normalizer_.apply(t.content), added_ids_.at(t.content));
        else raw_trie_.add(t.content, added_ids_.at(t.content));
      }
    }
  }

  // bos/eos from tokenizer_config.json beside the file (transformers' bos_token / eos_token,
  // a string or {"content": ...}); without that file: no BOS, EOS <|endoftext|> if present.
  void read_special_ids() {
    const fs::path cfg = fs::path(path_).parent_path() / "tokenizer_config.json";
    if (!fs::exists(cfg)) {
      eos_ = id_of("<|endoftext|>");
      return;
    }
    json c;
    try {
      c = json::parse(read_file(cfg.string()));
    } catch (const json::exception& e) {
      throw_input(cfg.string(), std::string("is not valid JSON: ") + e.what(), "fix or remove tokenizer_config.json");
    }
    auto lookup = [&](const char* key) -> int32_t {
      if (!c.is_object() || !c.contains(key) || c[key].is_null()) return -1;
      const json& v = c[key];
      std::string token;
      if (v.is_string()) token = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) token = v["content"].get<std::string>();
      else throw_input(cfg.string(), std::string(key) + " is neither a string nor {\"content\": ...}", "fix or remove tokenizer_config.json");
      const int32_t id = id_of(token);
      if (id < 0) {
        throw_input(cfg.string(), std::string(key) + " '" + token + "' is not in the vocabulary of " + path_,
                    "fix tokenizer_config.json or pass the tokenizer it belongs to");
      }
      return id;
    };
    bos_ = lookup("bos_token");
    eos_ = lookup("eos_token");
  }

  // tokenizers' AddedVocabulary::find_matches: calls f(piece, -1) for text and f(token, id) for
  // each added token found (single_word, lstrip and rstrip applied).
  void split_added(std::string_view s, const TokenTrie& trie, const std::function<void(std::string_view, int32_t)>& f) const {
    if (trie.empty()) {
      if (!s.empty()) f(s, -1);
      return;
    }
    size_t start_offset = 0, search = 0, a = 0, b = 0;
    int32_t id = -1;
    while (search < s.size() && trie.find(s, search, &a, &b, &id)) {
      search = b;
      const AddedToken& t = added_by_id_.at(id);
      if (t.single_word) {
        const bool start_space = a == 0 || !ends_with_word(s.substr(0, a));
        const bool stop_space = b == s.size() || !starts_with_word(s.substr(b));
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) a = std::max(trailing_space_start(s.substr(0, a)), start_offset);
      if (t.rstrip) b += leading_space_end(s.substr(b));
      if (start_offset < a) f(s.substr(start_offset, a - start_offset), -1);
      f(s.substr(a, b - a), id);
      start_offset = b;
    }
    if (start_offset < s.size()) f(s.substr(start_offset), -1);
  }

  std::string path_;
  Normalizer normalizer_;
  PreTokenizer pre_;
  BpeModel model_;
  Decoder decoder_;
  bpe::PostProcessor post_;
  std::unordered_map<std::string, int32_t> added_ids_;
  std::unordered_map<int32_t, AddedToken> added_by_id_;
  TokenTrie raw_trie_, normalized_trie_;
  int64_t vocab_ = 0;
  int32_t bos_ = -1, eos_ = -1;
  uint64_t hash_ = 0;
};

json read_json(const std::string& path) {
  if (!fs::is_regular_file(path)) throw_input(path, "does not exist", "pass a Hugging Face tokenizer.json");
  try {
    return json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    throw_input(path, std::string("is not valid JSON: ") + e.what(), "pass a Hugging Face tokenizer.json");
  }
}

// The checks that decide whether a parsed tokenizer.json is a model agate reads.
void check_model(const std::string& path, const json& j) {
  if (!j.is_object()) throw_input(path, "is not a JSON object", "pass a Hugging Face tokenizer.json");
  if (j.contains("version") && j["version"].is_string() && j["version"] != "1.0") {
    throw_input(path, "tokenizer.json version '" + j["version"].get<std::string>() + "' is unknown", "expected version 1.0");
  }
  if (!j.contains("model") || !j["model"].is_object()) throw_input(path, "has no \"model\" object", "pass a Hugging Face tokenizer.json");
  const json& m = j["model"];
  const std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>()
                           : m.contains("merges")                      ? "BPE"
                                                                       : "unknown";
  if (type != "BPE") throw_input(path, "tokenizer model type '" + type + "' is not supported (agate reads BPE)", kHint);
}

}  // namespace

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& path) {
  const json j = read_json(path);
  try {
    check_model(path, j);
    return std::make_unique<BpeTokenizer>(path, j);
  } catch (const json::exception& e) {
    throw_input(path, std::string("unexpected tokenizer.json structure: ") + e.what(), "pass a Hugging Face tokenizer.json");
  }
}

std::string bpe_tokenizer_problem(const std::string& path) {
  try {
    const json j = read_json(path);
    check_model(path, j);
    // The stages around the model decide the rest; they are small to build.
    Normalizer n(j.contains("normalizer") ? j["normalizer"] : json(), path);
    PreTokenizer p(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), path);
    Decoder d(j.contains("decoder") ? j["decoder"] : json(), path);
    bpe::PostProcessor pp(j.contains("post_processor") ? j["post_processor"] : json(), path);
  } catch (const Error& e) {
    return e.message();
  } catch (const json::exception& e) {
    return path + ": unexpected tokenizer.json structure: " + e.what();
  }
  return "";
}

}  // namespace agate
