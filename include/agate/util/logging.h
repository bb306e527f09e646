// Rank-aware logging: a facade over spdlog, which lives in its own small library (agate_log) that
// never sees Torch's include directories (Torch's bundled fmt 12 breaks Debian's spdlog/fmt 9 in
// any translation unit that sees both). Info goes to rank 0's console, warnings and errors to
// every rank's; a log file gets everything.
//
//   agate::log::info("step {}/{} | loss {:.4f}", step, steps, loss);
//
// Format strings use fmt's syntax; arguments are integers, floating point numbers or strings
// (anything else: format it to a string first). A malformed format string never throws: the
// message is logged raw with a note.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace agate {

// Configures the default logger: pattern "[time] [rank r] [level] msg" on stderr, and optionally
// also into `log_file` (all levels down to debug). Safe to call more than once.
// `verbosity`: "debug", "info", "warn" or "error".
void init_logging(int rank = 0, const std::string& log_file = "", const std::string& verbosity = "info");

namespace log {

enum class Level { debug, info, warn, error };

// One type-erased argument (formatted by the logging library, not here).
struct Arg {
  enum class Kind { i64, u64, f64, str } kind;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string_view s;

  template <typename T, std::enable_if_t<std::is_integral_v<T> && std::is_signed_v<T>, int> = 0>
  Arg(T v) : kind(Kind::i64), i(v) {}  // NOLINT(google-explicit-constructor)
  template <typename T, std::enable_if_t<std::is_integral_v<T> && std::is_unsigned_v<T>, int> = 0>
  Arg(T v) : kind(Kind::u64), u(v) {}  // NOLINT(google-explicit-constructor)
  template <typename T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
  Arg(T v) : kind(Kind::f64), f(v) {}  // NOLINT(google-explicit-constructor)
  Arg(const std::string& v) : kind(Kind::str), s(v) {}  // NOLINT(google-explicit-constructor)
  Arg(std::string_view v) : kind(Kind::str), s(v) {}    // NOLINT(google-explicit-constructor)
  Arg(const char* v) : kind(Kind::str), s(v) {}         // NOLINT(google-explicit-constructor)
};

// Formats and writes one message (the arguments live until it returns).
void write(Level level, std::string_view format, const Arg* args, size_t n);

template <typename... A>
void emit(Level level, std::string_view format, const A&... a) {
  const Arg args[sizeof...(A) + 1] = {Arg(a)..., Arg(0)};
  write(level, format, args, sizeof...(A));
}
template <typename... A>
void debug(std::string_view format, const A&... a) { emit(Level::debug, format, a...); }
template <typename... A>
void info(std::string_view format, const A&... a) { emit(Level::info, format, a...); }
template <typename... A>
void warn(std::string_view format, const A&... a) { emit(Level::warn, format, a...); }
template <typename... A>
void error(std::string_view format, const A&... a) { emit(Level::error, format, a...); }

}  // namespace log
}  // namespace agate
