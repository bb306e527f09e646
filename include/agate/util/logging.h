// Rank-aware logging on top of spdlog: info on rank 0, warnings and errors everywhere.
#pragma once

#include <string>

namespace agate {

// Configures the default spdlog logger: pattern "[time] [rank r] [level] msg" on stderr, and
// optionally also into `log_file` (all levels down to debug). Safe to call more than once.
// `verbosity`: "debug", "info", "warn" or "error".
void init_logging(int rank = 0, const std::string& log_file = "", const std::string& verbosity = "info");

}  // namespace agate
