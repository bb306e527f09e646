#include "agate/util/fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "agate/util/error.h"

namespace fs = std::filesystem;

namespace agate {

namespace {
std::string errno_text() { return std::strerror(errno); }

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}
}  // namespace

std::string read_file(const std::string& path) {
  if (fs::is_directory(path)) throw_input(path, "is a folder, not a file", "pass a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw_input(path, fs::exists(path) ? "cannot be read" : "does not exist",
                "check the path and its permissions");
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  const fs::path target(path);
  const std::string dir = target.parent_path().string();
  std::random_device rd;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd() % 100000);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    throw_runtime("cannot create '" + tmp + "': " + errno_text(),
                  "is the folder writable and is there free space?");
  }
  const auto* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string why = errno_text();
      ::close(fd);
      ::unlink(tmp.c_str());
      throw_runtime("cannot write '" + path + "': " + why, "is the disk full?");
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw_runtime("cannot flush '" + path + "': " + why, "is the disk full?");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw_runtime("cannot rename '" + tmp + "' to '" + path + "': " + why);
  }
  fsync_dir(dir);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  if (fs::exists(path, ec) && !fs::is_directory(path, ec)) {
    throw_input(path, "exists and is not a folder", "choose another output path");
  }
  fs::create_directories(path, ec);
  if (ec) throw_input(path, "cannot create folder: " + ec.message(), "check permissions");
}

bool can_create_in(const std::string& dir) {
  std::string trial = (fs::path(dir) / ".agate-probe-XXXXXX").string();
  if (::mkdtemp(trial.data()) == nullptr) return false;
  ::rmdir(trial.c_str());
  return true;
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    throw_input(path, errno == ENOENT ? "does not exist" : "cannot be opened: " + errno_text(),
                "check the path");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_input(path, "is not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const std::string why = errno_text();
      ::close(fd);
      throw_input(path, "cannot be memory-mapped: " + why);
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace agate
