// safetensors: read (memory-mapped, strictly validated) and write; sharded checkpoints.
//
// Format (https://huggingface.co/docs/safetensors): u64 little-endian header length N, an N-byte
// JSON object {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data buffer; offsets are relative to the buffer start.
#pragma once

#include "agate/io/named_tensors.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace agate {

class MappedFile;

struct SafetensorsEntry {
  std::string name;
  std::string dtype;             // "F32", "BF16", ... as in the file
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // byte range inside the data buffer
};

// A validated, memory-mapped safetensors file. Validation (at open) checks: the header length
// fits the file and the 100 MB limit, the header is a JSON object, every entry has a known
// dtype, a non-negative shape and offsets inside the buffer whose length equals
// numel x dtype size, and no two entries overlap. Every failure names the file.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;

  // The tensor `name` in the file's dtype. Zero-copy (it views the map and keeps it alive)
  // when the data is suitably aligned, else a copy. Read-only: clone before writing to it.
  at::Tensor tensor(const std::string& name) const;
  // The same for a tensor that holds real numbers (weights, gate and optimizer state): its dtype
  // must be F64, F32, F16 or BF16. An integer or boolean dtype (a header that mislabels float
  // data) is refused naming the file and the tensor, instead of being converted to garbage.
  at::Tensor float_tensor(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  size_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};


// Writes tensors (any of the supported dtypes, made contiguous) atomically to `path`.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Maps a safetensors dtype string to an ATen scalar type and back; throws on unknown names.
c10::ScalarType safetensors_dtype(const std::string& name, const std::string& where = "");
std::string safetensors_dtype_name(c10::ScalarType type);

// A model folder's weights: either `model.safetensors.index.json` (sharded) or a single
// `model.safetensors`. Shards are opened lazily and validated on open.
class WeightFolder {
 public:
  static WeightFolder open(const std::string& dir);
  // Whether `dir` holds weights (either layout) at all; a config-only folder does not.
  static bool present(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;   // file dtype, see SafetensorsFile::tensor
  at::Tensor float_tensor(const std::string& name) const;  // see SafetensorsFile::float_tensor
  uint64_t total_bytes() const;

 private:
  std::string dir_;
  std::map<std::string, std::string> where_;                 // tensor name -> shard file
  std::shared_ptr<std::map<std::string, SafetensorsFile>> files_;  // shard file -> opened file
  const SafetensorsFile& file(const std::string& shard) const;
};

// Saves tensors as a HF weight folder: a single `model.safetensors`, or, when the data exceeds
// `max_shard_bytes` (> 0), `model-0000k-of-0000n.safetensors` shards plus the index JSON.
void save_weight_folder(const std::string& dir, const NamedTensors& tensors,
                        uint64_t max_shard_bytes = 0,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace agate
