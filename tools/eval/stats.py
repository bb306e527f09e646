"""Paired bootstrap confidence intervals (per-sample pairing, fixed seed)."""

from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import numpy as np


def mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def ppl(x: np.ndarray) -> np.ndarray:
    """Perplexity of per-sample mean NLLs (equal weight per sample)."""
    return np.exp(x.mean(axis=-1))


STATISTICS = {"mean": mean, "ppl": ppl}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], statistic: str = "mean", resamples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> Tuple[float, float, float]:
    """stat(a) - stat(b) and its percentile bootstrap interval: samples are resampled with
    replacement as pairs (the same indices for a and b), `resamples` times from a fixed seed.
    Returns (difference, low, high)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length non-empty 1-D samples, got {a.shape} and {b.shape}")
    f: Callable = STATISTICS[statistic]
    diff = float(f(a) - f(b))
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    d = f(a[idx]) - f(b[idx])
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2])
    return diff, float(lo), float(hi)


def excludes_zero(lo: float, hi: float) -> bool:
    return lo > 0 or hi < 0 if not (math.isnan(lo) or math.isnan(hi)) else False
