#include "agate/util/choices.h"

#include "agate/util/error.h"

namespace agate {

void throw_bad_choice(const std::string& what, const std::string& got, const char* const* names, size_t n) {
  std::string all, hint;
  for (size_t i = 0; i < n; ++i) {
    all += (i ? ", " : "") + std::string(names[i]);
    hint += (i == 0 ? "" : i + 1 == n ? " or " : ", ") + std::string(names[i]);
  }
  throw_usage(what + " '" + got + "' is not one of " + all, "use " + hint);
}

}  // namespace agate
