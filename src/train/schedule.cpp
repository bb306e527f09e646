#include "agate/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace agate {

double Schedule::at(int64_t step) const {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double floor = peak * min_ratio;
  if (kind == "constant") return peak;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double t = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);  // 0..1 after warm-up
  if (kind == "cosine") return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * t));
  // wsd: stable at peak, then linear decay to the floor over the last decay_fraction.
  const double start = 1.0 - decay_fraction;
  if (t <= start) return peak;
  return peak + (floor - peak) * (t - start) / std::max(decay_fraction, 1e-9);
}

}  // namespace agate
