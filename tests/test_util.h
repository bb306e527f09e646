// Small helpers shared by the test suites (header-only, no torch).
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace agate::test {

// A fresh folder under $TMPDIR, removed (with its contents) at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "agate-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_; }
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The source tree: the build's, or $AGATE_SOURCE_DIR (a bundle run elsewhere, scripts/test_gpu.sh).
inline std::string source_path(const std::string& rel) {
  const char* env = std::getenv("AGATE_SOURCE_DIR");
  return std::string(env && *env ? env : AGATE_SOURCE_DIR) + "/" + rel;
}

// Runs `body` and returns the agate::Error message it threw ("" if none): for asserting that
// bad input is refused with a message that names the file and the problem.
template <typename F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace agate::test
