#include "agate/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace agate {

double Schedule::at(int64_t step) const {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double floor = peak * min_ratio;
  if (kind == ScheduleKind::Constant) return peak;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double t = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);  // 0..1 after warm-up
  if (kind == ScheduleKind::Cosine) return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * t));
  // wsd: stable at peak, then linear decay to the floor over the last decay_fraction.
  const double start = 1.0 - decay_fraction;
  if (t <= start) return peak;
  return peak + (floor - peak) * (t - start) / std::max(decay_fraction, 1e-9);
}

double step_uniform(uint64_t seed, int64_t step, uint64_t stream) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step) * 0xBF58476D1CE4E5B9ull + stream * 0x94D049BB133111EBull;
  x ^= x >> 30;  // splitmix64's finaliser
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

int64_t context_at(double min_share, double max_share, int64_t T, uint64_t seed, int64_t step) {
  if (max_share <= 0 || T < 2) return 0;
  const double share = min_share + (max_share - min_share) * step_uniform(seed, step, 1);
  return std::clamp<int64_t>(std::llround(share * static_cast<double>(T)), 1, T - 1);
}

double random_target_at(double target, double max_target, uint64_t seed, int64_t step) {
  if (max_target <= target) return target;
  return target + (max_target - target) * step_uniform(seed, step, 2);
}

}  // namespace agate
