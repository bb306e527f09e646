// What changes from step to step of a run: the learning rate (linear warm-up, then cosine,
// constant, or warmup-stable-decay) and the per-step draws (a context/continuation split, a
// randomised keep target), which depend on (seed, step) alone: the same on every rank and
// after a resume.
#pragma once

#include <cstdint>
#include <string>

#include "agate/util/choices.h"

namespace agate {

enum class ScheduleKind { Cosine, Constant, Wsd };
inline constexpr Choices<ScheduleKind, 3> kScheduleKinds{{"cosine", "constant", "wsd"}};

struct Schedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  double peak = 1e-3;
  int64_t warmup = 0;
  int64_t total = 1;
  double min_ratio = 0.1;       // final lr / peak (cosine, wsd)
  double decay_fraction = 0.2;  // wsd: share of the steps spent decaying

  // Learning rate for optimizer step `step` (0-based).
  double at(int64_t step) const;
};

// A uniform draw in [0, 1) for (seed, step, stream) (splitmix64 of the three).
double step_uniform(uint64_t seed, int64_t step, uint64_t stream);

// The context length of `step`'s context/continuation split of a T-token sample: 0 (no split)
// when max_share is 0, else round(U(min_share, max_share) * T) clamped to [1, T - 1].
int64_t context_at(double min_share, double max_share, int64_t T, uint64_t seed, int64_t step);

// The keep target of `step`, randomised: `target` when max_target <= target, else
// U(target, max_target), so that one set of gates meets several budgets.
double random_target_at(double target, double max_target, uint64_t seed, int64_t step);

}  // namespace agate
