#include "model.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "agate/util/error.h"
#include "pipeline.h"
#include "unicode.h"

namespace agate::bpe {

using nlohmann::json;

namespace {

const char* kFileHint = "the file must be a Hugging Face tokenizers tokenizer.json";

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

// Pre-tokens shorter than this are cached (tokenizers caches below 256 bytes too).
constexpr size_t kMaxCachedWord = 256;
constexpr size_t kMaxCacheWords = 1 << 18;

// Encoded words of one thread for one model; a thread that switches models starts afresh.
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> index;  // word -> (offset, count) in ids
  std::vector<int32_t> ids;
  std::string key;
  void reset(uint64_t who) {
    owner = who;
    index.clear();
    ids.clear();
  }
};

WordCache& word_cache() {
  thread_local WordCache cache;
  return cache;
}

// Working memory of merge_word on this thread.
struct Symbol {
  int32_t id, prev, next;
  bool alive;
};
struct Merge {
  uint32_t rank, pos;
  int32_t new_id;
};
// Heap order: the lowest rank first, then the leftmost position (tokenizers' Merge ordering).
bool lower_priority(const Merge& a, const Merge& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; }

struct MergeScratch {
  std::vector<int32_t> ids;
  std::vector<Symbol> symbols;
  std::vector<Merge> heap;
  std::string mapped;
};

MergeScratch& merge_scratch() {
  thread_local MergeScratch s;
  return s;
}

std::string opt_string(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

}  // namespace

BpeModel::BpeModel(const json& m, const std::string& where) : where_(where) {
  static std::atomic<uint64_t> next_instance{1};
  instance_ = next_instance++;
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw_input(where, "model has no \"vocab\" object", kFileHint);
  if (!m.contains("merges") || !m["merges"].is_array()) throw_input(where, "model has no \"merges\" list", kFileHint);
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0) {
    throw_input(where, "BPE dropout is set: encoding would be random", "set \"dropout\" to null for deterministic tokenization");
  }
  vocab_.reserve(m["vocab"].size());
  int32_t max_id = -1;
  for (const auto& [token, id] : m["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      throw_input(where, "vocab entry '" + token + "' has no valid id", "ids must be non-negative integers");
    }
    vocab_[token] = id.get<int32_t>();
    max_id = std::max(max_id, id.get<int32_t>());
  }
  vocab_r_.assign(static_cast<size_t>(max_id + 1), "");
  has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : vocab_) {
    vocab_r_[static_cast<size_t>(id)] = token;
    has_id_[static_cast<size_t>(id)] = true;
  }
  unk_token_ = opt_string(m, "unk_token");
  has_unk_ = m.contains("unk_token") && m["unk_token"].is_string();
  prefix_ = opt_string(m, "continuing_subword_prefix");
  suffix_ = opt_string(m, "end_of_word_suffix");
  fuse_unk_ = m.value("fuse_unk", false);
  byte_fallback_ = m.value("byte_fallback", false);
  ignore_merges_ = m.value("ignore_merges", false);

  // Merges: ["a b", ...] (older files) or [["a", "b"], ...]; the rank is the position.
  merges_.reserve(m["merges"].size());
  uint32_t rank = 0;
  for (const json& e : m["merges"]) {
    std::string a, b;
    if (e.is_string()) {
      const std::string line = e.get<std::string>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
        throw_input(where, "merge " + std::to_string(rank + 1) + " ('" + line + "') is not two tokens separated by one space",
                    "merges are \"a b\" strings or [\"a\", \"b\"] pairs");
      }
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      throw_input(where, "merge " + std::to_string(rank + 1) + " is neither \"a b\" nor [\"a\", \"b\"]", kFileHint);
    }
    const std::string merged = a + (b.size() >= prefix_.size() ? b.substr(prefix_.size()) : std::string());
    for (const std::string* t : std::initializer_list<const std::string*>{&a, &b, &merged}) {
      if (!vocab_.count(*t)) {
        throw_input(where, "merge " + std::to_string(rank + 1) + " ('" + a + "', '" + b + "') refers to '" + *t +
                               "', which is not in the vocabulary",
                    "the vocab and merges do not belong together: re-export the tokenizer");
      }
    }
    merges_[pair_key(vocab_.at(a), vocab_.at(b))] = {rank, vocab_.at(merged)};  // a repeated pair keeps its last rank
    ++rank;
  }

  byte_fast_ = prefix_.empty() && suffix_.empty();
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab_.find(byte_char(static_cast<unsigned char>(b)));
    byte_id_[static_cast<size_t>(b)] = it == vocab_.end() ? -1 : it->second;
    if (it == vocab_.end()) byte_fast_ = false;
  }
}

int32_t BpeModel::token_to_id(const std::string& token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_r_.size() || !has_id_[static_cast<size_t>(id)]) return nullptr;
  return &vocab_r_[static_cast<size_t>(id)];
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() >= kMaxCachedWord) {
    merge_word(word, out);
    return;
  }
  WordCache& c = word_cache();
  if (c.owner != instance_) c.reset(instance_);
  c.key.assign(word.data(), word.size());
  const auto it = c.index.find(c.key);
  if (it != c.index.end()) {
    out.insert(out.end(), c.ids.begin() + it->second.first, c.ids.begin() + it->second.first + it->second.second);
    return;
  }
  const size_t mark = out.size();
  merge_word(word, out);
  if (c.index.size() >= kMaxCacheWords) c.reset(instance_);
  c.index.emplace(c.key, std::make_pair(static_cast<uint32_t>(c.ids.size()), static_cast<uint32_t>(out.size() - mark)));
  c.ids.insert(c.ids.end(), out.begin() + static_cast<std::ptrdiff_t>(mark), out.end());
}

void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  ids.clear();
  if (byte_fast_) {
    for (char ch : word) ids.push_back(byte_id_[static_cast<unsigned char>(ch)]);
    return;
  }
  // tokenizers' BPE::merge_word over the byte-level characters, with the prefix/suffix,
  // byte-fallback and unknown-token rules.
  std::string w;
  for (char ch : word) w += byte_char(static_cast<unsigned char>(ch));
  int32_t unk = -1;  // a pending unknown token
  auto unk_id = [&] {
    const int32_t id = token_to_id(unk_token_);
    if (id < 0) throw_input(where_, "unk_token '" + unk_token_ + "' is not in the vocabulary", "fix the tokenizer's model.unk_token");
    return id;
  };
  for (size_t i = 0; i < w.size();) {
    const size_t n = utf8_len(static_cast<unsigned char>(w[i]));
    std::string s = w.substr(i, n);
    if (i > 0 && !prefix_.empty()) s = prefix_ + s;
    if (i + n >= w.size() && !suffix_.empty()) s += suffix_;
    i += n;
    const auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (unk >= 0) ids.push_back(unk);
      unk = -1;
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char b : s) {
        char code[8];
        std::snprintf(code, sizeof(code), "<0x%02X>", b);
        const int32_t id = token_to_id(code);
        if (id < 0) break;
        bytes.push_back(id);
      }
      if (bytes.size() == s.size()) {
        ids.insert(ids.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (has_unk_) {
      if (unk >= 0 && !fuse_unk_) ids.push_back(unk);
      unk = unk >= 0 && fuse_unk_ ? unk : unk_id();
    }
  }
  if (unk >= 0) ids.push_back(unk);
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  MergeScratch& sc = merge_scratch();
  if (ignore_merges_) {
    sc.mapped.clear();
    for (char ch : word) sc.mapped += byte_char(static_cast<unsigned char>(ch));
    const auto it = vocab_.find(sc.mapped);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  initial_symbols(word, sc.ids);
  const size_t n = sc.ids.size();
  if (n <= 1) {
    out.insert(out.end(), sc.ids.begin(), sc.ids.end());
    return;
  }
  // tokenizers' Word::merge_all: a heap of candidate merges, lowest rank (then leftmost) first;
  // a popped entry whose pair has changed since it was pushed is dropped.
  auto& sym = sc.symbols;
  sym.resize(n);
  for (size_t i = 0; i < n; ++i) {
    sym[i] = {sc.ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  }
  auto& heap = sc.heap;
  heap.clear();
  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    const auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < n; ++i) {
    if (const auto* m = lookup(sym[i].id, sym[i + 1].id)) heap.push_back({m->first, static_cast<uint32_t>(i), m->second});
  }
  std::make_heap(heap.begin(), heap.end(), lower_priority);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower_priority);
    const Merge top = heap.back();
    heap.pop_back();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    Symbol& right = sym[static_cast<size_t>(next_pos)];
    const auto* m = lookup(cur.id, right.id);
    if (!m || m->second != top.new_id) continue;  // expired entry
    cur.id = top.new_id;
    cur.next = right.next;
    right.alive = false;
    if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
    if (cur.prev >= 0) {
      if (const auto* pm = lookup(sym[static_cast<size_t>(cur.prev)].id, cur.id)) {
        heap.push_back({pm->first, static_cast<uint32_t>(cur.prev), pm->second});
        std::push_heap(heap.begin(), heap.end(), lower_priority);
      }
    }
    if (cur.next >= 0) {
      if (const auto* nm = lookup(cur.id, sym[static_cast<size_t>(cur.next)].id)) {
        heap.push_back({nm->first, top.pos, nm->second});
        std::push_heap(heap.begin(), heap.end(), lower_priority);
      }
    }
  }
  for (size_t i = 0; i < n; ++i)
    if (sym[i].alive) out.push_back(sym[i].id);
}

}  // namespace agate::bpe
