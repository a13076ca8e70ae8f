"""Confidence intervals shared by the summaries, the utility table, the diagnostics and the
report's figures: the 95% normal quantile, the Wilson score interval of a proportion and the
normal-approximation interval of a mean (mean ± Z95·sd/√n, sd the sample standard deviation)."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["Z95", "half_width", "mean_interval", "wilson"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (n may be an effective, non-integer n)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def half_width(sd: float, n: int) -> float:
    """Half-width of the normal 95% interval of a mean of n values with sample sd ``sd``
    (NaN when n < 2)."""
    return Z95 * sd / math.sqrt(n) if n > 1 else math.nan


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the normal 95% interval of the mean of ``values``; the bounds are NaN
    when there are fewer than two values (the mean too when there are none)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    half = half_width(math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n)
    return mean, mean - half, mean + half
