#include "agate/model/inspect.h"

#include <filesystem>

#include <algorithm>
#include <cstring>
#include <vector>

#include "agate/io/safetensors.h"
#include "agate/util/checksum.h"
#include "agate/util/fs.h"

namespace agate {

ModelSummary summarize_model_folder(const std::string& dir) {
  ModelSummary s;
  s.config = load_model_config((std::filesystem::path(dir) / "config.json").string());
  WeightFolder w = WeightFolder::open(dir);
  for (const auto& name : w.names()) {
    const SafetensorsEntry& e = w.entry(name);
    int64_t numel = 1;
    for (int64_t d : e.shape) numel *= d;
    s.num_tensors += 1;
    s.num_parameters += numel;
    s.params_by_dtype[e.dtype] += numel;
    s.bytes_by_dtype[e.dtype] += static_cast<int64_t>(e.end - e.begin);
  }
  return s;
}

std::string weights_fingerprint(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string cfg = read_file((fs::path(dir) / "config.json").string());
  uint32_t crc = crc32(cfg.data(), cfg.size());
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    auto m = MappedFile::open(f.string());
    uint64_t n = 0;
    if (m->size() >= 8) std::memcpy(&n, m->data(), 8);
    const size_t head = static_cast<size_t>(std::min<uint64_t>(m->size(), 8 + n));
    crc = crc32(m->data(), head, crc);
    const uint64_t size = m->size();
    crc = crc32(&size, sizeof(size), crc);
    const uint64_t body = size - head;
    const uint8_t* data = m->data() + head;
    if (body <= (64ull << 20)) {
      crc = crc32(data, body, crc);
    } else {
      const uint64_t edge = 4ull << 20, block = 4096;
      crc = crc32(data, edge, crc);
      crc = crc32(data + body - edge, edge, crc);
      for (uint64_t i = 0; i < 256; ++i) crc = crc32(data + (body - block) / 255 * i, block, crc);
    }
  }
  return hex32(crc);
}

}  // namespace agate
