// Errors that tell the user what was expected, what was found, and what to do.
#pragma once

#include <stdexcept>
#include <string>

namespace agate {

// Every error agate reports to a user. `kind` decides the CLI's exit status:
// Usage and Input -> 2 (fix the command, the config or the data), Runtime -> 1 (the run
// failed: memory, numbers, a lost peer), Internal -> 70 (EX_SOFTWARE: an invariant of agate's
// own code broke, e.g. a tensor of the wrong shape between two of its modules; a bug, not
// the user's input).
class Error : public std::runtime_error {
 public:
  enum class Kind { Usage, Input, Runtime, Internal };

  Error(Kind kind, const std::string& message, const std::string& hint = "");

  Kind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  const std::string& hint() const { return hint_; }
  int exit_code() const { return kind_ == Kind::Internal ? 70 : kind_ == Kind::Runtime ? 1 : 2; }

 private:
  Kind kind_;
  std::string message_;
  std::string hint_;
};

// Shorthands. `where` is usually a file path (prefixed to the message as "where: ").
[[noreturn]] void throw_usage(const std::string& message, const std::string& hint = "");
[[noreturn]] void throw_input(const std::string& where, const std::string& message,
                              const std::string& hint = "");
[[noreturn]] void throw_runtime(const std::string& message, const std::string& hint = "");
// An internal invariant broke: "internal error: <message>" with a please-report hint.
[[noreturn]] void throw_internal(const std::string& message);

}  // namespace agate
