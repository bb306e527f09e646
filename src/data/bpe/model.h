// The BPE model of a byte-level tokenizer.json (internal header): vocabulary, ranked merges,
// and the encoding of one pre-token, cached per thread.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace agate::bpe {

class BpeModel {
 public:
  // `model` is tokenizer.json's "model" object (type BPE); `where` names the file in errors.
  BpeModel(const nlohmann::json& model, const std::string& where);

  // Appends the ids of one pre-token, given as raw bytes: the GPT-2 byte-to-character mapping
  // is applied here, then the merges by rank (tokenizers' BPE::tokenize).
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  int32_t token_to_id(const std::string& token) const;  // -1 when absent
  const std::string* id_to_token(int32_t id) const;     // nullptr when absent
  size_t size() const { return vocab_.size(); }         // tokenizers' get_vocab_size
  int32_t max_id() const { return static_cast<int32_t>(vocab_r_.size()) - 1; }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& ids) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> vocab_r_;  // id -> token ("" where no token has the id)
  std::vector<bool> has_id_;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;
  std::array<int32_t, 256> byte_id_{};  // id of each byte's character, -1 when not in the vocabulary
  bool byte_fast_ = true;               // every byte's character is a token and no prefix/suffix is set
  std::string unk_token_, prefix_, suffix_;
  bool has_unk_ = false, fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string where_;
  uint64_t instance_;  // keys the per-thread word cache
};

}  // namespace agate::bpe
