#include "agate/util/error.h"

namespace agate {

namespace {
std::string compose(const std::string& message, const std::string& hint) {
  return hint.empty() ? message : message + " (hint: " + hint + ")";
}
}  // namespace

Error::Error(Kind kind, const std::string& message, const std::string& hint)
    : std::runtime_error(compose(message, hint)), kind_(kind), message_(message), hint_(hint) {}

void throw_usage(const std::string& message, const std::string& hint) {
  throw Error(Error::Kind::Usage, message, hint);
}

void throw_input(const std::string& where, const std::string& message, const std::string& hint) {
  throw Error(Error::Kind::Input, where.empty() ? message : where + ": " + message, hint);
}

void throw_runtime(const std::string& message, const std::string& hint) {
  throw Error(Error::Kind::Runtime, message, hint);
}

void throw_internal(const std::string& message) {
  throw Error(Error::Kind::Internal, "internal error: " + message,
              "a bug in agate, not in your input: please report the command and this line");
}

}  // namespace agate
