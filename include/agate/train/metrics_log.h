// metrics.jsonl: one JSON object per line, written by the lead rank only.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <fstream>
#include <string>

namespace agate {

class MetricsLog {
 public:
  // `writer`: this rank writes (others get a log whose record() does nothing).
  // resume_step >= 0: a resumed run keeps the records up to that step and drops what the
  // interrupted run wrote after its checkpoint (a torn last line from a kill included);
  // resume_step < 0: a fresh run starts with an empty file.
  MetricsLog(const std::string& path, bool writer, int64_t resume_step);
  // Appends one record and flushes it (a kill loses at most the line being written).
  void record(const nlohmann::json& j);

 private:
  bool writer_;
  std::ofstream out_;
};

}  // namespace agate
