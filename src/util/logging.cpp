// The only translation unit that includes spdlog (and so fmt): built into agate_log, which does
// not link Torch. See include/agate/util/logging.h.
#include "agate/util/logging.h"

#include <fmt/args.h>
#include <fmt/format.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <stdexcept>
#include <vector>

namespace agate {

void init_logging(int rank, const std::string& log_file, const std::string& verbosity) {
  auto level = spdlog::level::from_str(verbosity);
  if (level == spdlog::level::off && verbosity != "off") {
    // agate::Error lives in agate_lib (which sees Torch); a plain invalid_argument keeps this
    // library free of it. The CLI validates the level before calling here.
    throw std::invalid_argument("unknown log level '" + verbosity + "' (use debug, info, warn or error)");
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

namespace log {

void write(Level level, std::string_view format, const Arg* args, size_t n) {
  static constexpr spdlog::level::level_enum kLevels[] = {spdlog::level::debug, spdlog::level::info,
                                                          spdlog::level::warn, spdlog::level::err};
  const auto lv = kLevels[static_cast<int>(level)];
  if (!spdlog::default_logger_raw()->should_log(lv)) return;
  fmt::dynamic_format_arg_store<fmt::format_context> store;
  for (size_t k = 0; k < n; ++k) {
    switch (args[k].kind) {
      case Arg::Kind::i64: store.push_back(args[k].i); break;
      case Arg::Kind::u64: store.push_back(args[k].u); break;
      case Arg::Kind::f64: store.push_back(args[k].f); break;
      case Arg::Kind::str: store.push_back(args[k].s); break;
    }
  }
  std::string msg;
  try {
    msg = fmt::vformat(fmt::string_view(format.data(), format.size()), store);
  } catch (const fmt::format_error& e) {
    msg = std::string(format) + " [log format error: " + e.what() + "]";
  }
  spdlog::default_logger_raw()->log(lv, msg);
}

}  // namespace log
}  // namespace agate
