#include "agate/util/threads.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace agate {

int configure_threads(int requested, int local_ranks) {
  int n = requested;
  if (n <= 0) {
    int local = std::max(1, local_ranks);
    if (local_ranks <= 0)
      if (const char* s = std::getenv("LOCAL_WORLD_SIZE")) local = std::max(1, std::atoi(s));
    n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local);
  }
  at::set_num_threads(n);
  return n;
}

}  // namespace agate
