// Checksums used in agate's file formats. CRC-32 (zlib's, as Python's zlib.crc32 computes it),
// so any program can produce or verify them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace agate {

// CRC-32 of `size` bytes, continuing from `crc` (start with 0).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);
uint32_t crc32_file(const std::string& path);

// "0x" + 8 lowercase hex digits, as manifests store checksums.
std::string hex32(uint32_t v);

}  // namespace agate
