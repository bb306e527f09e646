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

void check_thread_count(int n, const std::string& what) {
  // Hundreds of threads on a few cores only thrash (and starting them can hang a small
  // machine): at most 4 x the cores, and never above kMaxThreads.
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int limit = cores > 0 ? std::min(kMaxThreads, 4 * cores) : kMaxThreads;
  if (n > limit) {
    throw_usage(what + " " + std::to_string(n) + " is above " + std::to_string(limit) +
                    (limit < kMaxThreads ? " (4 x the " + std::to_string(cores) + " cores here)" : std::string()),
                "use 0 (all cores, " + std::to_string(cores) + " here) or at most " + std::to_string(limit));
  }
}

int configure_threads(int requested, int local_ranks) {
  int n = requested;
  check_thread_count(n, "--threads / run.threads");
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
