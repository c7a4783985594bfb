"""Robust linear trends with confidence intervals, shared by the in-process verdict and the monitor.

Theil-Sen (``scipy.stats.theilslopes``) is the estimator: the median of pairwise slopes ignores up
to ~29% outliers (a GC pause, one big batch) that would drag a least-squares fit, and scipy gives
its confidence interval without assuming normal noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True, slots=True)
class Trend:
    """A robust slope (units of y per unit of x) with its confidence interval."""

    slope: float
    low: float
    high: float
    intercept: float
    points: int

    @property
    def significant_growth(self) -> bool:
        """True when the whole interval lies above zero."""
        return self.low > 0

    def at(self, x: float) -> float:
        """The fitted value at ``x``."""
        return self.intercept + self.slope * x

    def __str__(self) -> str:
        return f"{self.slope:+.4g}/unit (95% CI {self.low:+.4g} .. {self.high:+.4g}, n={self.points})"


def fit_trend(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> Trend | None:
    """Theil-Sen fit of ``y`` against ``x``; None with fewer than three distinct x values."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.size < 3 or np.unique(xs).size < 3:
        return None
    slope, intercept, low, high = stats.theilslopes(ys, xs, alpha=confidence)
    return Trend(float(slope), float(low), float(high), float(intercept), int(xs.size))


def time_to_reach(current: float, limit: float, rate: float) -> float:
    """Units of x until ``current`` reaches ``limit`` at ``rate`` per unit; inf when not growing."""
    if rate <= 0 or not math.isfinite(rate):
        return math.inf
    return max(0.0, (limit - current) / rate)
