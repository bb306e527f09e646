// Intra-op thread configuration (LibTorch defaults to 1 thread on this platform).
#pragma once

namespace agate {

// Sets LibTorch's intra-op threads. `requested` <= 0 means all cores divided by the number of
// local ranks (`local_ranks`, or LOCAL_WORLD_SIZE when 0; default 1), at least 1. Returns it.
int configure_threads(int requested = 0, int local_ranks = 0);

}  // namespace agate
