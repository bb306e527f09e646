#include "agate/util/checksum.h"

#include <zlib.h>

#include <cstdio>

#include "agate/util/fs.h"

namespace agate {

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (size > 0) {  // zlib takes uInt lengths
    const uInt n = static_cast<uInt>(size > (1u << 30) ? (1u << 30) : size);
    c = ::crc32(c, p, n);
    p += n;
    size -= n;
  }
  return static_cast<uint32_t>(c);
}

uint32_t crc32_file(const std::string& path) {
  auto f = MappedFile::open(path);
  return crc32(f->data(), f->size());
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

}  // namespace agate
