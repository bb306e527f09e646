// A dataset folder: manifest.json plus the shards it lists (docs/formats.md).
//
// manifest.json:
//   {"format": "agate-tokens", "version": 1, "kind": "cpt" | "sft", "split": "train",
//    "vocab_size": V, "eos_id": E, "bos_id": B, "tokenizer_hash": "0x1234abcd",
//    "num_tokens": N, "num_documents": D, "num_loss_tokens": M,
//    "shards": [{"file": "shard_00000.bin", "num_tokens": n, "num_documents": d,
//                "checksum": "0x...", "bytes": b}, ...]}
// The manifest is written last: a folder without one holds no dataset yet.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agate/data/shard.h"

namespace agate {

struct ShardInfo {
  std::string file;          // name inside the dataset folder
  uint64_t num_tokens = 0;
  uint64_t num_documents = 0;
  uint32_t checksum = 0;     // payload CRC-32
  uint64_t bytes = 0;
};

struct DatasetManifest {
  std::string kind = "cpt";  // cpt | sft
  std::string split = "train";
  TokenSpace space;
  uint64_t num_tokens = 0;
  uint64_t num_documents = 0;
  uint64_t num_loss_tokens = 0;  // tokens with mask 1 (all tokens for cpt)
  std::vector<ShardInfo> shards;
};

DatasetManifest read_manifest(const std::string& dir);

// Refuses (input error naming `key` and the dataset) a dataset made with another tokenizer than
// the model's: when `model_dir` holds tokenizer.json or tokenizer.model and the manifest's
// tokenizer hash (CRC-32 of the tokenizer file) is known (non-zero), one of them must match.
// Another tokenizer's ids are other text, even with the same vocabulary size.
void check_dataset_tokenizer(const DatasetManifest& manifest, const std::string& data_dir, const std::string& model_dir,
                             const std::string& key);
void write_manifest(const std::string& dir, const DatasetManifest& manifest);

// An opened dataset: every shard mapped and validated, and checked against the manifest
// (counts, checksums, vocabulary, tokenizer hash). `expect`, when given, must match the
// dataset's token space (the run's tokenizer / model vocabulary).
class Dataset {
 public:
  static Dataset open(const std::string& dir, const std::optional<TokenSpace>& expect = std::nullopt);

  const std::string& dir() const { return dir_; }
  const DatasetManifest& manifest() const { return manifest_; }
  const std::vector<Shard>& shards() const { return shards_; }
  bool is_sft() const { return manifest_.kind == "sft"; }
  uint32_t max_token_id() const;  // over every shard
  // Refuses (usage error naming `key`) a dataset holding an id >= model_vocab.
  void check_fits(int64_t model_vocab, const std::string& key) const;

 private:
  std::string dir_;
  DatasetManifest manifest_;
  std::vector<Shard> shards_;
};

// Writes documents into shards of about `shard_tokens` tokens, then the manifest. Documents
// never straddle shards.
class DatasetWriter {
 public:
  DatasetWriter(std::string dir, std::string kind, std::string split, TokenSpace space, uint64_t shard_tokens);

  // tokens: one document; mask: empty (cpt) or one 0/1 per token (sft).
  void add(const std::vector<uint32_t>& tokens, const std::vector<uint8_t>& mask = {});
  // Flushes the last shard and writes manifest.json; returns the manifest.
  DatasetManifest finish();

 private:
  void flush();
  std::string dir_;
  DatasetManifest manifest_;
  uint64_t shard_tokens_;
  ShardContents current_;
};

}  // namespace agate
