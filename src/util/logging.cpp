#include "agate/util/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <vector>

#include "agate/util/error.h"

namespace agate {

void init_logging(int rank, const std::string& log_file, const std::string& verbosity) {
  auto level = spdlog::level::from_str(verbosity);
  if (level == spdlog::level::off && verbosity != "off") {
    throw_usage("unknown log level '" + verbosity + "'", "use debug, info, warn or error");
  }
  // Non-zero ranks stay quiet below warnings on the console; their files get everything.
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(rank == 0 ? level : std::max(level, spdlog::level::warn));
  std::vector<spdlog::sink_ptr> sinks{console};
  if (!log_file.empty()) {
    auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file, /*truncate=*/false);
    file->set_level(spdlog::level::debug);
    sinks.push_back(file);
  }
  auto logger = std::make_shared<spdlog::logger>("agate", sinks.begin(), sinks.end());
  logger->set_level(spdlog::level::debug);
  logger->set_pattern("[%H:%M:%S.%e] [rank " + std::to_string(rank) + "] [%^%l%$] %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace agate
