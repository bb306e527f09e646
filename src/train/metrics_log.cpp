#include "agate/train/metrics_log.h"

#include <nlohmann/json.hpp>

#include "agate/util/fs.h"

namespace agate {

MetricsLog::MetricsLog(const std::string& path, bool writer, int64_t resume_step) : writer_(writer) {
  if (!writer_) return;
  std::string kept;
  if (resume_step >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      try {
        if (nlohmann::json::parse(line).value("step", int64_t{0}) <= resume_step) kept += line + "\n";
      } catch (const nlohmann::json::exception&) {  // a torn last line from a kill
      }
    }
  }
  write_file_atomic(path, kept);
  out_.open(path, std::ios::app);
}

void MetricsLog::record(const nlohmann::json& j) {
  if (!writer_) return;
  out_ << j.dump() << "\n";
  out_.flush();
}

}  // namespace agate
