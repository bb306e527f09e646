// File helpers: whole-file reads, atomic writes, read-only memory maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace agate {

// Reads a whole file; throws agate::Error (Input) naming the path if it cannot.
std::string read_file(const std::string& path);

// Writes `size` bytes to `path` atomically: a temporary file in the same folder, fsync,
// rename over `path`, fsync of the folder. On any failure the old `path` (if any) is intact
// and the temporary is removed.
void write_file_atomic(const std::string& path, const void* data, size_t size);
void write_file_atomic(const std::string& path, const std::string& text);

// Creates `path` and its parents if needed; throws (Input) if it cannot or if it is a file.
void make_dirs(const std::string& path);

// Whether a file can be created in the folder `dir`: a folder is made there and removed at once
// (access() says yes to root everywhere, /proc included).
bool can_create_in(const std::string& dir);

// A read-only memory map of a whole file. Shared so tensors viewing it can keep it alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace agate
