#include "agate/data/dataset.h"

#include <cstdio>
#include <filesystem>
#include <limits>
#include <type_traits>
#include <utility>
#include <nlohmann/json.hpp>

#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

constexpr const char* kManifest = "manifest.json";

uint32_t parse_hex32(const json& v, const std::string& where) {
  if (!v.is_string()) throw_input(where, "checksum/hash must be a \"0x...\" string");
  try {
    return static_cast<uint32_t>(std::stoul(v.get<std::string>(), nullptr, 16));
  } catch (const std::exception&) {
    throw_input(where, "bad hex value " + v.dump());
  }
}

// An integer key must hold a value T can represent (nlohmann's get<T> would wrap it silently).
template <typename T>
bool fits(const json& v) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  const int64_t x = v.get<int64_t>();
  return x >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
         (x < 0 || static_cast<uint64_t>(x) <= static_cast<uint64_t>(std::numeric_limits<T>::max()));
}

template <typename T>
T field(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw_input(where, std::string("missing key \"") + key + "\"", "was manifest.json written by agate tokenize?");
  if constexpr (std::is_integral_v<T>) {
    if (!fits<T>(j.at(key))) {
      throw_input(where, std::string("key \"") + key + "\" is not an integer in [" + std::to_string(std::numeric_limits<T>::min()) +
                             ", " + std::to_string(std::numeric_limits<T>::max()) + "]: " + j.at(key).dump(),
                  "was manifest.json written by agate tokenize?");
    }
  }
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw_input(where, std::string("key \"") + key + "\" has the wrong type: " + j.at(key).dump());
  }
}

}  // namespace

DatasetManifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifest).string();
  if (!fs::is_directory(dir)) throw_input(dir, "is not a folder", "pass a dataset folder written by 'agate tokenize'");
  if (!fs::exists(path)) {
    throw_input(dir, "has no manifest.json", "not a dataset folder, or its tokenization did not finish");
  }
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw_input(path, std::string("is not valid JSON: ") + e.what());
  }
  if (field<std::string>(j, "format", path) != "agate-tokens") throw_input(path, "format is not \"agate-tokens\"");
  if (field<int>(j, "version", path) != 1) throw_input(path, "unsupported manifest version", "re-tokenize with this agate");
  DatasetManifest m;
  m.kind = field<std::string>(j, "kind", path);
  if (m.kind != "cpt" && m.kind != "sft") throw_input(path, "kind must be cpt or sft, found " + m.kind);
  m.split = field<std::string>(j, "split", path);
  m.space.vocab_size = field<uint32_t>(j, "vocab_size", path);
  m.space.eos_id = field<int32_t>(j, "eos_id", path);
  m.space.bos_id = field<int32_t>(j, "bos_id", path);
  for (const auto& [name, id] : {std::pair<const char*, int32_t>{"eos_id", m.space.eos_id}, {"bos_id", m.space.bos_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(m.space.vocab_size)) {
      throw_input(path, std::string(name) + " " + std::to_string(id) + " is outside the vocabulary (-1 for none, or 0.." +
                            std::to_string(static_cast<int64_t>(m.space.vocab_size) - 1) + ")",
                  "the manifest is damaged: re-tokenize the data with agate tokenize");
    }
  }
  if (!j.contains("tokenizer_hash")) throw_input(path, "missing key \"tokenizer_hash\"", "was manifest.json written by agate tokenize?");
  m.space.tokenizer_hash = parse_hex32(j.at("tokenizer_hash"), path);
  m.num_tokens = field<uint64_t>(j, "num_tokens", path);
  m.num_documents = field<uint64_t>(j, "num_documents", path);
  m.num_loss_tokens = field<uint64_t>(j, "num_loss_tokens", path);
  if (!j.contains("shards") || !j["shards"].is_array()) throw_input(path, "missing \"shards\" list");
  for (const auto& s : j["shards"]) {
    ShardInfo info;
    info.file = field<std::string>(s, "file", path);
    info.num_tokens = field<uint64_t>(s, "num_tokens", path);
    info.num_documents = field<uint64_t>(s, "num_documents", path);
    if (!s.contains("checksum")) throw_input(path, "a shard lacks its \"checksum\"", "was manifest.json written by agate tokenize?");
    info.checksum = parse_hex32(s.at("checksum"), path);
    info.bytes = field<uint64_t>(s, "bytes", path);
    if (info.file.empty() || info.file.find('/') != std::string::npos) throw_input(path, "shard name '" + info.file + "' is not a file name");
    m.shards.push_back(info);
  }
  return m;
}

void write_manifest(const std::string& dir, const DatasetManifest& m) {
  json shards = json::array();
  for (const auto& s : m.shards) {
    shards.push_back({{"file", s.file}, {"num_tokens", s.num_tokens}, {"num_documents", s.num_documents},
                      {"checksum", hex32(s.checksum)}, {"bytes", s.bytes}});
  }
  json j = {{"format", "agate-tokens"}, {"version", 1}, {"kind", m.kind}, {"split", m.split},
            {"vocab_size", m.space.vocab_size}, {"eos_id", m.space.eos_id}, {"bos_id", m.space.bos_id},
            {"tokenizer_hash", hex32(static_cast<uint32_t>(m.space.tokenizer_hash))},
            {"num_tokens", m.num_tokens}, {"num_documents", m.num_documents},
            {"num_loss_tokens", m.num_loss_tokens}, {"shards", shards}};
  write_file_atomic((fs::path(dir) / kManifest).string(), j.dump(2) + "\n");
}

// ---------------------------------------------------------------------------------------------
uint32_t Dataset::max_token_id() const {
  uint32_t m = 0;
  for (const auto& s : shards_) m = std::max(m, s.max_token_id());
  return m;
}

void check_dataset_tokenizer(const DatasetManifest& m, const std::string& data_dir, const std::string& model_dir,
                             const std::string& key) {
  const uint32_t want = static_cast<uint32_t>(m.space.tokenizer_hash);
  if (want == 0) return;  // written without a tokenizer fingerprint (tools/write_shards.py may)
  std::string found;
  for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
    const fs::path p = fs::path(model_dir) / name;
    if (!fs::is_regular_file(p)) continue;
    const uint32_t h = crc32_file(p.string());
    if (h == want) return;
    found += (found.empty() ? "" : ", ") + std::string(name) + " " + hex32(h);
  }
  if (found.empty()) return;  // the model folder has no tokenizer to compare with
  throw_input(key, "dataset '" + data_dir + "' was tokenized with tokenizer " + hex32(want) + ", but the model folder '" +
                       model_dir + "' holds " + found,
              "tokenize the data with the model's own tokenizer (agate tokenize --tokenizer " +
                  (fs::path(model_dir) / (found.rfind("tokenizer.json", 0) == 0 ? "tokenizer.json" : "tokenizer.model")).string() +
                  " --force)");
}

void Dataset::check_fits(int64_t model_vocab, const std::string& key) const {
  if (static_cast<int64_t>(max_token_id()) < model_vocab) return;
  throw_usage(key + ": dataset '" + dir_ + "' holds token id " + std::to_string(max_token_id()) +
                  ", outside the model's vocabulary (" + std::to_string(model_vocab) + " ids; the tokenizer has " +
                  std::to_string(manifest_.space.vocab_size) + ")",
              "the data was tokenized for another model, or its text contains tokens the model has no embedding for");
}

Dataset Dataset::open(const std::string& dir, const std::optional<TokenSpace>& expect) {
  Dataset d;
  d.dir_ = dir;
  d.manifest_ = read_manifest(dir);
  const std::string mpath = (fs::path(dir) / kManifest).string();
  const DatasetManifest& m = d.manifest_;
  if (m.shards.empty() || m.num_tokens == 0) {
    throw_input(dir, "the dataset is empty (no tokens)", "check the inputs given to 'agate tokenize'");
  }
  if (expect) {
    if (expect->tokenizer_hash != m.space.tokenizer_hash) {
      throw_input(dir, "was tokenized with tokenizer " + hex32(m.space.tokenizer_hash) + " but this run uses " +
                           hex32(expect->tokenizer_hash),
                  "re-tokenize the data with the run's tokenizer, or point the run at the matching tokenizer");
    }
    if (expect->vocab_size < m.space.vocab_size) {
      throw_input(dir, "has vocabulary size " + std::to_string(m.space.vocab_size) + " but the model has only " +
                           std::to_string(expect->vocab_size),
                  "the data was made for another model");
    }
  }
  uint64_t tokens = 0, docs = 0;
  for (const auto& info : m.shards) {
    const std::string path = (fs::path(dir) / info.file).string();
    if (!fs::exists(path)) throw_input(mpath, "lists shard '" + info.file + "', which does not exist", "copy the whole dataset folder");
    Shard s = Shard::open(path);
    const TokenSpace sp = s.space();
    if (sp.vocab_size != m.space.vocab_size || sp.tokenizer_hash != m.space.tokenizer_hash || sp.eos_id != m.space.eos_id) {
      throw_input(path, "its header disagrees with manifest.json (vocabulary or tokenizer)", "shards from different datasets were mixed");
    }
    if (s.num_tokens() != info.num_tokens || s.header().payload_crc32 != info.checksum) {
      throw_input(path, "does not match its manifest entry (token count or checksum)", "shards from different runs were mixed");
    }
    if ((m.kind == "sft") != (s.mask() != nullptr) || (m.kind == "sft" && s.doc_offsets() == nullptr)) {
      throw_input(path, "an " + m.kind + " shard must " + (m.kind == "sft" ? "have" : "not have") + " a loss mask (and sft needs document offsets)");
    }
    tokens += s.num_tokens();
    docs += s.num_docs();
    d.shards_.push_back(std::move(s));
  }
  if (tokens != m.num_tokens || docs != m.num_documents) {
    throw_input(mpath, "totals do not add up over its shards", "the manifest was edited or is stale");
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
DatasetWriter::DatasetWriter(std::string dir, std::string kind, std::string split, TokenSpace space, uint64_t shard_tokens)
    : dir_(std::move(dir)), shard_tokens_(shard_tokens) {
  manifest_.kind = std::move(kind);
  manifest_.split = std::move(split);
  manifest_.space = space;
  make_dirs(dir_);
  // A stale manifest must never describe shards being rewritten: remove it first.
  std::error_code ec;
  fs::remove(fs::path(dir_) / kManifest, ec);
}

void DatasetWriter::add(const std::vector<uint32_t>& tokens, const std::vector<uint8_t>& mask) {
  if (tokens.empty()) return;
  if (current_.doc_offsets.empty()) current_.doc_offsets.push_back(0);
  current_.tokens.insert(current_.tokens.end(), tokens.begin(), tokens.end());
  if (manifest_.kind == "sft") {
    current_.mask.insert(current_.mask.end(), mask.begin(), mask.end());
    for (uint8_t v : mask) manifest_.num_loss_tokens += v;
  } else {
    manifest_.num_loss_tokens += tokens.size();
  }
  current_.doc_offsets.push_back(current_.tokens.size());
  manifest_.num_tokens += tokens.size();
  manifest_.num_documents += 1;
  if (current_.tokens.size() >= shard_tokens_) flush();
}

void DatasetWriter::flush() {
  if (current_.tokens.empty()) return;
  char name[32];
  std::snprintf(name, sizeof(name), "shard_%05zu.bin", manifest_.shards.size());
  const std::string path = (fs::path(dir_) / name).string();
  ShardInfo info;
  info.file = name;
  info.num_tokens = current_.tokens.size();
  info.num_documents = current_.doc_offsets.size() - 1;
  info.checksum = write_shard(path, manifest_.space, current_);
  info.bytes = fs::file_size(path);
  manifest_.shards.push_back(info);
  current_ = ShardContents{};
}

DatasetManifest DatasetWriter::finish() {
  flush();
  // Remove shards of an earlier, larger dataset in the same folder.
  for (size_t i = manifest_.shards.size();; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "shard_%05zu.bin", i);
    std::error_code ec;
    if (!fs::remove(fs::path(dir_) / name, ec)) break;
  }
  write_manifest(dir_, manifest_);
  return manifest_;
}

}  // namespace agate
