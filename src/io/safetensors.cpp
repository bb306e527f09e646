#include "agate/io/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's limit
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

struct DTypeInfo {
  const char* name;
  c10::ScalarType type;
  size_t size;
};

const DTypeInfo kDTypes[] = {
    {"F64", c10::kDouble, 8}, {"F32", c10::kFloat, 4},  {"F16", c10::kHalf, 2},
    {"BF16", c10::kBFloat16, 2}, {"I64", c10::kLong, 8}, {"I32", c10::kInt, 4},
    {"I16", c10::kShort, 2},  {"I8", c10::kChar, 1},    {"U8", c10::kByte, 1},
    {"BOOL", c10::kBool, 1},
};

const DTypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

c10::ScalarType safetensors_dtype(const std::string& name, const std::string& where) {
  const DTypeInfo* d = find_dtype(name);
  if (!d) {
    throw_input(where, "unsupported dtype '" + name + "'",
                "agate reads F64, F32, F16, BF16, I64, I32, I16, I8, U8 and BOOL");
  }
  return d->type;
}

std::string safetensors_dtype_name(c10::ScalarType type) {
  for (const auto& d : kDTypes)
    if (d.type == type) return d.name;
  throw_runtime(std::string("cannot store dtype ") + c10::toString(type) + " in safetensors");
}

at::Tensor SafetensorsFile::float_tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (e && e->dtype != "F64" && e->dtype != "F32" && e->dtype != "F16" && e->dtype != "BF16") {
    throw_input(path_, "tensor '" + name + "' is " + e->dtype + ", expected a floating dtype (F32, BF16, F16 or F64)",
                "its header mislabels the data, or the file is not what it claims to be: re-export or re-download it");
  }
  return tensor(name);
}

// ---------------------------------------------------------------------------------------------
SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.file_ = MappedFile::open(path);
  const size_t size = f.file_->size();
  if (size < 8) {
    throw_input(path, "truncated safetensors file (" + std::to_string(size) + " bytes, need at least 8)",
                "the file is incomplete; re-copy or re-save it");
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, f.file_->data(), 8);  // little-endian hosts only (x86, arm)
  if (header_len > kMaxHeader) {
    throw_input(path, "header length " + std::to_string(header_len) + " exceeds the 100 MB limit",
                "this is not a safetensors file, or it is corrupt");
  }
  if (header_len > size - 8) {
    throw_input(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                          std::to_string(size) + " bytes)",
                "the file is truncated or not a safetensors file");
  }
  f.data_start_ = 8 + header_len;
  const uint64_t data_size = size - f.data_start_;

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(f.file_->data()) + 8,
                         reinterpret_cast<const char*>(f.file_->data()) + 8 + header_len);
  } catch (const json::exception& e) {
    throw_input(path, std::string("header is not valid JSON: ") + e.what(), "the file is corrupt");
  }
  if (!header.is_object()) throw_input(path, "header is not a JSON object", "the file is corrupt");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    const std::string where = path + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!v.is_object()) throw_input(where, "__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw_input(where, "__metadata__ value '" + m.key() + "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      throw_input(where, "entry needs dtype, shape and data_offsets", "the file is corrupt");
    }
    SafetensorsEntry e;
    e.name = name;
    if (!v["dtype"].is_string()) throw_input(where, "dtype is not a string");
    e.dtype = v["dtype"].get<std::string>();
    const DTypeInfo* d = find_dtype(e.dtype);
    if (!d) {
      throw_input(where, "unsupported dtype '" + e.dtype + "'",
                  "agate reads F64, F32, F16, BF16, I64, I32, I16, I8, U8 and BOOL");
    }
    if (!v["shape"].is_array()) throw_input(where, "shape is not an array");
    // numel * element size stays below 2^62 bytes, so the byte count below cannot wrap around.
    const uint64_t max_numel = (uint64_t(1) << 62) / d->size;
    uint64_t numel = 1;
    for (const auto& s : v["shape"]) {
      if (!s.is_number_integer() || s.get<int64_t>() < 0) throw_input(where, "shape holds a non-integer or negative size");
      const auto dim = static_cast<uint64_t>(s.get<int64_t>());
      if (dim != 0 && numel > max_numel / dim) throw_input(where, "shape " + v["shape"].dump() + " is absurdly large", "the file is corrupt");
      numel *= dim;
      e.shape.push_back(s.get<int64_t>());
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      throw_input(where, "data_offsets must be two non-negative integers");
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size) {
      throw_input(where, "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                             "] out of range (data buffer holds " + std::to_string(data_size) + " bytes)",
                  "the file is truncated or corrupt");
    }
    if (e.end - e.begin != numel * d->size) {
      throw_input(where, "byte length " + std::to_string(e.end - e.begin) + " does not match shape " +
                             shape_text(e.shape) + " x " + e.dtype + " (" + std::to_string(numel * d->size) + " bytes)",
                  "the file is corrupt");
    }
    f.index_[name] = f.entries_.size();
    f.entries_.push_back(std::move(e));
  }

  // No overlaps: sort by begin, each entry must end before the next begins.
  std::vector<const SafetensorsEntry*> order;
  for (const auto& e : f.entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i]->begin < order[i - 1]->end) {
      throw_input(path, "tensors '" + order[i - 1]->name + "' and '" + order[i]->name + "' overlap",
                  "the file is corrupt");
    }
  }
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) throw_input(path_, "has no tensor '" + name + "'");
  const DTypeInfo* d = find_dtype(e->dtype);
  const uint8_t* p = file_->data() + data_start_ + e->begin;
  auto opts = at::TensorOptions().dtype(d->type);
  if (reinterpret_cast<uintptr_t>(p) % d->size == 0) {
    auto keep_alive = file_;
    return at::from_blob(const_cast<uint8_t*>(p), e->shape, [keep_alive](void*) {}, opts);
  }
  at::Tensor t = at::empty(e->shape, opts);
  if (e->end > e->begin) std::memcpy(t.data_ptr(), p, e->end - e->begin);
  return t;
}

// ---------------------------------------------------------------------------------------------
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (header.contains(name)) throw_runtime("duplicate tensor name '" + name + "' while saving " + path);
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = c.numel() * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t len = text.size();
  out.append(reinterpret_cast<const char*>(&len), 8);
  out += text;
  for (const auto& c : data) out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  write_file_atomic(path, out);
}

// ---------------------------------------------------------------------------------------------
bool WeightFolder::present(const std::string& dir) {
  return fs::exists(fs::path(dir) / kIndexName) || fs::exists(fs::path(dir) / kSingleName);
}

WeightFolder WeightFolder::open(const std::string& dir) {
  WeightFolder w;
  w.dir_ = dir;
  w.files_ = std::make_shared<std::map<std::string, SafetensorsFile>>();
  const fs::path index = fs::path(dir) / kIndexName;
  const fs::path single = fs::path(dir) / kSingleName;
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_file(index.string()));
    } catch (const json::exception& e) {
      throw_input(index.string(), std::string("is not valid JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw_input(index.string(), "has no \"weight_map\" object", "is this a HF sharded checkpoint index?");
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw_input(index.string(), "weight_map['" + it.key() + "'] is not a file name");
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard.empty()) {
        throw_input(index.string(), "weight_map['" + it.key() + "'] names '" + shard + "', not a file in the folder");
      }
      if (!fs::exists(fs::path(dir) / shard)) {
        throw_input(index.string(), "names shard '" + shard + "', which does not exist", "copy every shard of the model");
      }
      w.where_[it.key()] = shard;
    }
    // Every name the index promises must be in its shard.
    for (const auto& [name, shard] : w.where_) {
      if (!w.file(shard).find(name)) {
        throw_input((fs::path(dir) / shard).string(), "has no tensor '" + name + "' although the index says so",
                    "the checkpoint is incomplete or the index is stale");
      }
    }
  } else if (fs::exists(single)) {
    const SafetensorsFile& f = w.file(kSingleName);
    for (const auto& e : f.entries()) w.where_[e.name] = kSingleName;
  } else {
    throw_input(dir, std::string("has neither ") + kSingleName + " nor " + kIndexName,
                "a Hugging Face model folder holds config.json and its weights in safetensors");
  }
  return w;
}

const SafetensorsFile& WeightFolder::file(const std::string& shard) const {
  auto it = files_->find(shard);
  if (it == files_->end()) {
    it = files_->emplace(shard, SafetensorsFile::open((fs::path(dir_) / shard).string())).first;
  }
  return it->second;
}

std::vector<std::string> WeightFolder::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& WeightFolder::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw_input(dir_, "has no tensor '" + name + "'");
  return *file(it->second).find(name);
}

at::Tensor WeightFolder::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw_input(dir_, "has no tensor '" + name + "'");
  return file(it->second).tensor(name);
}

at::Tensor WeightFolder::float_tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw_input(dir_, "has no tensor '" + name + "'");
  return file(it->second).float_tensor(name);
}

uint64_t WeightFolder::total_bytes() const {
  uint64_t n = 0;
  for (const auto& kv : where_) {
    const auto& e = entry(kv.first);
    n += e.end - e.begin;
  }
  return n;
}

void save_weight_folder(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes,
                        const std::map<std::string, std::string>& metadata) {
  make_dirs(dir);
  uint64_t total = 0;
  for (const auto& kv : tensors) total += kv.second.numel() * kv.second.element_size();
  const fs::path index = fs::path(dir) / kIndexName;
  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    save_safetensors((fs::path(dir) / kSingleName).string(), tensors, metadata);
    std::error_code ec;
    fs::remove(index, ec);  // a stale index would shadow the new single file
    return;
  }
  std::vector<NamedTensors> shards(1);
  uint64_t in_shard = 0;
  for (const auto& kv : tensors) {
    const uint64_t bytes = kv.second.numel() * kv.second.element_size();
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(kv);
    in_shard += bytes;
  }
  json weight_map = json::object();
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save_safetensors((fs::path(dir) / name).string(), shards[i], metadata);
    for (const auto& kv : shards[i]) weight_map[kv.first] = name;
  }
  json j = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_file_atomic(index.string(), j.dump(2) + "\n");
  std::error_code ec;
  fs::remove(fs::path(dir) / kSingleName, ec);
}

}  // namespace agate
