#include "agate/util/threads.h"

#include "agate/util/error.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace agate {

namespace {
constexpr int kMaxThreads = 1024;  // run.threads' schema range too
}  // namespace

int configure_threads(int requested, int local_ranks) {
  int n = requested;
  if (n > kMaxThreads) {
    throw_usage("--threads / run.threads " + std::to_string(n) + " is above " + std::to_string(kMaxThreads),
                "use 0 (all cores, " + std::to_string(std::thread::hardware_concurrency()) + " here) or a small number");
  }
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
