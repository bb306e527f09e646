// Learning-rate schedules: linear warm-up, then cosine, constant, or warmup-stable-decay.
#pragma once

#include <cstdint>
#include <string>

namespace agate {

struct Schedule {
  std::string kind = "cosine";  // cosine | constant | wsd
  double peak = 1e-3;
  int64_t warmup = 0;
  int64_t total = 1;
  double min_ratio = 0.1;       // final lr / peak (cosine, wsd)
  double decay_fraction = 0.2;  // wsd: share of the steps spent decaying

  // Learning rate for optimizer step `step` (0-based).
  double at(int64_t step) const;
};

}  // namespace agate
