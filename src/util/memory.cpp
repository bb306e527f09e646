#include "agate/util/memory.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>

extern char** environ;

namespace agate {

bool tune_allocator() {
  const char* off = std::getenv("AGATE_MALLOC_TUNING");
  if (off && std::strcmp(off, "0") == 0) return false;
  for (char** e = environ; e && *e; ++e) {
    if (std::strncmp(*e, "MALLOC_", 7) == 0) return false;  // the user tunes glibc malloc themselves
  }
#ifdef __GLIBC__
  bool ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
  ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  ok &= mallopt(M_TOP_PAD, 256 << 20) == 1;
  return ok;
#else
  return false;
#endif
}

}  // namespace agate
