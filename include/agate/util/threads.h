// Intra-op thread configuration (LibTorch defaults to 1 thread on this platform).
#pragma once

#include <string>

namespace agate {

// Refuses (usage error naming `what`) a thread count above 4 x the cores (and above 1024).
void check_thread_count(int n, const std::string& what);

// Sets LibTorch's intra-op threads. `requested` <= 0 means all cores divided by the number of
// local ranks (`local_ranks`, or LOCAL_WORLD_SIZE when 0; default 1), at least 1. Returns it.
// Refuses more than check_thread_count allows.
int configure_threads(int requested = 0, int local_ranks = 0);

}  // namespace agate
