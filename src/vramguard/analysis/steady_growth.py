"""Is one memory series growing *steadily*, or only moving the way caches, flushes and noise do?

The verdict asks this question of each metric (allocated, reserved, memory outside PyTorch,
fragmentation). A plain slope is not enough: Theil-Sen of a sawtooth is positive (more pairs
rise than fall), a cache filling up has a clear slope until it is full, and a single step (a lazy
buffer created once) has a positive slope over any window that contains it. So growth counts
only when all of these hold, each aimed at one way of being fooled:

1. **Trend**: the robust Theil-Sen slope of the raw series over the window is significant (its
   95% interval lies above zero). This is also the figure the user sees.
2. **Retained level**: ``F[i] = min(y[i:])``, the least the run ever held again after sample
   ``i``, i.e. memory it never gave back. A leak lifts F through the recent half of the window;
   a sawtooth, a GC cycle or a noisy batch size leaves it flat (each dips back down), and a
   cache that has filled leaves it flat once full. Measured by a robust (Siegel) slope of F over
   the recent half, leaving out the last ~10% where F is the minimum of a handful of values.
   It must rise by at least one *spread*, and the raw series' own recent-half slope by at least
   two, where the spread is the lower-side robust spread (median - 10th percentile, scaled to
   sigma) of the series around its whole-window line. Why each choice, from 100 seeds of every
   scenario: F alone has little power against Gaussian noise (a deep dip early in the recent
   half lifts it by ~2.5 sigma now and then), the recent raw slope alone is fooled by sawtooths;
   together they separate cleanly. The lower side only, because F only sees dips and batch-size
   noise is heavy on the upper side. The whole-window line, because a stationary but slowly
   wandering series (a ``deque`` of variable-size outputs) fits its own recent line too well.
   Also at least ``min_total`` bytes (RSS moves in pages, so tiny rises mean nothing there).
3. **Not decelerating**: growth whose last third is far slower than its first third is a
   bounded structure filling up (a dict whose key set saturates, coupon-collector style), not
   (yet) a leak. Leaks keep their rate (ratio ~1) or start late (ratio > 1).

Exact series (the CPU census) have no noise: the spread is 0 and any retained rise counts, so a
steady exact growth is a leak and a flat exact series never is.

Pure numpy/scipy on plain arrays; no torch, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from vramguard.analysis.trend import Trend, fit_trend

MIN_POINTS = 20
"""Fewer post-warm-up samples than this is too little evidence for any verdict."""

RETAINED_IN_SPREADS = 1.0
"""Least rise of the retained level over the recent half, in spreads (~sigma). Over 100 seeds per
scenario, noise, sawtooth, GC and plateau series reach at most ~0.4x of both thresholds at once;
the weakest leaks (1 KiB/request under 20 KiB noise, 16 KiB under Pareto batch noise) >= ~1.5x.
The no-leak series that do reach them (a wandering deque, a key set still filling) are stopped
by the significance or the deceleration test."""
RECENT_IN_SPREADS = 2.0
"""Least rise of the raw series' robust slope over the recent half, in spreads."""

DECELERATION_RATIO = 0.5
"""Last-third slope below this share of the first-third slope reads as a cache filling up (see
``_deceleration``): a key set saturating over the run (K <= n/3 keys, ~95% full at the end) stays
below it, leaks (ratio ~1, or > 1 when they start late) above it."""

BELOW_FLOOR_SHARE = 0.125
"""A retained rise (recent half) under an eighth of ``min_total`` (about a quarter of it over the
whole window) is not "near" the floor (see ``below_floor``)."""

HIDDEN_ENVELOPE_SHARE = 0.5
"""A significant trend that failed the retained-level test is *hidden by noise*, not absent, when
the series' low envelope (10th percentile of its last third against its first) rose by at least
this share of what the trend predicts, ..."""
HIDDEN_MIN_LOW_SHARE = 0.5
"""... the trend is far from zero, its 95% interval's low end at least this share of the slope
(about four standard errors: for Gaussian noise, a flat series gets there by chance about once
in 20,000 in theory, where the 95% interval alone excludes zero once in 40 on the high side), ..."""
HIDDEN_CONTINUES = 1.0
"""... the recent half's 95% interval still reaches the window's slope (growth has not visibly
slowed), ..."""
HIDDEN_MAX_AUTOCORRELATION = 0.5
"""... and the residuals around the trend are nearly independent (lag-1 autocorrelation under
this), so the trend's interval means what it says. Over 100 seeds each (``tests/unit/series``
scenarios, 300 requests): no look-alike that reads "no leak" is moved; of a +300 B/request leak
under 20 KiB of noise, which read "no leak" in 75 of 100, 73 are moved to "inconclusive"; of flat
noisy series (four kinds of noise, 30-400 samples), 1 in 1,200 at 60 samples and none of 12,000
others (measured). Sawtooths, GC cycles and wandering deques have strongly autocorrelated
residuals (or a low envelope that returns to base), plateaus a recent half that stopped
growing."""

MAX_FIT_POINTS = 200
"""Theil-Sen is O(n^2 log n); beyond this many points we fit an even subsample (the median of
pairwise slopes of 200 evenly spaced points is as good an estimate for a trend, and 4x cheaper)."""

_Q10_TO_SIGMA = 1.2816  # standard normal: median - 10th percentile


@dataclass(frozen=True, slots=True)
class GrowthEvidence:
    """What one series says about steady growth over its window (request-indexed)."""

    trend: Trend | None
    """Theil-Sen slope per request of the raw series, with its 95% interval; None when too few
    distinct points."""
    recent_rise: float
    """Robust (Siegel) slope of the raw series over the recent half, times its span."""
    recent_rate: float
    """That slope itself: growth per request of the recent half (judged against ``min_rate``)."""
    retained_rise: float
    """How much the retained level (suffix minimum) rose over the recent half of the window."""
    spread: float
    """Robust spread of the series around its recent trend (0 for an exact, smooth series)."""
    deceleration: float | None
    """Last-third slope / first-third slope; None when the first third did not grow."""
    points: int
    span: float
    """Requests between the first and last sample of the window."""
    significant: bool
    """The raw trend's 95% interval lies above zero."""
    retained: bool
    """The retained level and the recent trend rose well beyond the spread (and ``min_total``)."""
    growing: bool
    """All three tests passed: trend significant, retained rise large, not decelerating."""
    decelerating: bool
    """Trend and retained rise passed, but growth is slowing down like a cache filling up."""
    below_floor: bool = False
    """Steady growth on every test but the floors (``min_total``, ``min_rate``): significant,
    beyond the spread, not slowing, with a retained rise of at least ``BELOW_FLOOR_SHARE`` of
    ``min_total``, but under a floor.
    A small or young leak looks like this, and so does a floored counter's own churn."""

    @property
    def total_growth(self) -> float:
        """Fitted growth over the window (slope x span), 0 when there is no trend."""
        return 0.0 if self.trend is None else self.trend.slope * self.span


def _subsample(x: np.ndarray, y: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= limit:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, limit).round().astype(np.intp))
    return x[idx], y[idx]


def _robust_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Siegel repeated-medians slope and intercept: a library robust estimator like Theil-Sen,
    without the interval (which we do not need for the inner tests) and ~3x cheaper."""
    if x.size < 3 or np.unique(x).size < 3:
        return 0.0, float(np.median(y)) if y.size else 0.0
    result = stats.siegelslopes(y, x)
    return float(result.slope), float(result.intercept)


def suffix_minimum(y: np.ndarray) -> np.ndarray:
    """``F[i] = min(y[i:])``: the memory level the run never went below again after sample i."""
    return np.minimum.accumulate(y[::-1])[::-1]


def _deceleration(x: np.ndarray, y: np.ndarray, tail: int, fit_points: int) -> float | None:
    """How fast the last third grows relative to the first: the larger of two estimates, each
    taken at its most leak-friendly; None if the first third did not grow.

    A ratio of noisy slopes is itself noisy, and a leak wrongly vetoed here is a miss, so:
    - raw series: the *upper* end of the last third's 95% Theil-Sen interval over the first
      third's slope, so that noise (short windows, heavy-tailed batch sizes) widens the interval
      and keeps the ratio high instead of producing a spuriously low one;
    - retained level (suffix minimum, tail left out): steady under heavy-tailed noise, where the
      raw thirds swing with a few huge batches.
    A saturating key set is low on both (<= ~0.4 over 100 seeds); a leak is high on at least one.
    """
    ratios = []
    n = x.size
    third = n // 3
    first, _ = _robust_slope(*_subsample(x[:third], y[:third], fit_points))
    last = fit_trend(*_subsample(x[n - third :], y[n - third :], fit_points))
    if first > 0 and last is not None:
        ratios.append(last.high / first)
    level = suffix_minimum(y)
    end = n - tail
    third = end // 3
    first, _ = _robust_slope(*_subsample(x[:third], level[:third], fit_points))
    last_slope, _ = _robust_slope(
        *_subsample(x[end - third : end], level[end - third : end], fit_points))
    if first > 0:
        ratios.append(last_slope / first)
    return max(ratios) if ratios else None


def steady_growth(
    x: np.ndarray,
    y: np.ndarray,
    *,
    min_total: float = 0.0,
    min_rate: float = 0.0,
    fit_points: int = MAX_FIT_POINTS,
    always_fit: bool = True,
) -> GrowthEvidence:
    """Test one series (``y`` against request index ``x``, both ascending in x) for steady growth.

    ``min_total``: the least fitted growth over the window that can count (e.g. 4 MiB for RSS).
    ``min_rate``: the least growth per request of the *recent half* (its robust slope) that can
    count. The recent half, not the window's average: a leak that began late in the window is
    diluted by its flat start, and a drift that fades is judged on what it does now.
    ``fit_points``: subsample cap for the reported Theil-Sen fit (lower = cheaper, for prefixes).
    ``always_fit``: with False, skip the (costliest) Theil-Sen fit when the cheap retained-level
    test already says no; ``trend`` is then None. The verdict does this for secondary metrics.
    """
    n = int(x.size)
    span = float(x[-1] - x[0]) if n else 0.0
    if n < MIN_POINTS:
        return GrowthEvidence(None, 0.0, 0.0, 0.0, 0.0, None, n, span, significant=False,
                              retained=False, growing=False, decelerating=False)

    # Retained level over the recent half, without the last ~10% where the suffix minimum is
    # only the minimum of a handful of values and rises on noise alone.
    half = n // 2
    tail = max(2, n // 10)
    level = suffix_minimum(y)
    if not always_fit and level[n - tail - 1] - level[half] <= max(0.0, min_total / 2):
        # Cheap early answer (no fits) for the common case of a secondary counter that is
        # constant or never retains anything: the retained level did not rise at all.
        return GrowthEvidence(None, 0.0, 0.0, 0.0, 0.0, None, n, span, significant=False,
                              retained=False, growing=False, decelerating=False)
    fx, fy = _subsample(x[half : n - tail], level[half : n - tail], fit_points // 2)
    f_slope, _ = _robust_slope(fx, fy)
    retained_rise = max(0.0, f_slope) * float(fx[-1] - fx[0]) if fx.size else 0.0

    # Spread around the whole window's robust line (not the recent half's: a slowly wandering
    # series fits its own short line too well): noise, a sawtooth's amplitude, a GC cycle's
    # height or a cache's fill curve all show up here, a steady trend does not. Only the lower
    # side counts: the suffix minimum only ever sees the dips, and the noise of batch sizes is
    # heavy on the upper side (a rare huge batch) but bounded below, so a two-sided spread would
    # hide leaks under it. (median - 10th percentile) / 1.28 is sigma for Gaussian noise.
    slope, _ = _robust_slope(*_subsample(x[half:], y[half:], fit_points // 2))
    recent_rise = slope * float(x[-1] - x[half])
    whole_slope, whole_intercept = _robust_slope(*_subsample(x, y, fit_points // 2))
    low, mid = np.percentile(y - (whole_intercept + whole_slope * x), [10, 50])
    spread = float(mid - low) / _Q10_TO_SIGMA

    beyond_spread = (
        retained_rise > 0
        and retained_rise >= RETAINED_IN_SPREADS * spread
        and recent_rise >= RECENT_IN_SPREADS * spread
    )
    if not (beyond_spread and retained_rise >= min_total / 2) and not always_fit:
        return GrowthEvidence(None, recent_rise, slope, retained_rise, spread, None, n, span,
                              significant=False, retained=False, growing=False,
                              decelerating=False)
    trend = fit_trend(*_subsample(x, y, fit_points))
    significant = trend is not None and trend.low > 0
    above_floor = (trend is not None and retained_rise >= min_total / 2
                   and trend.slope * span >= min_total and slope >= min_rate)
    retained = beyond_spread and above_floor

    deceleration = None
    if significant and beyond_spread:  # only worth its two fits when it can change the answer
        deceleration = _deceleration(x, y, tail, fit_points // 3)
    slowing = deceleration is not None and deceleration < DECELERATION_RATIO

    return GrowthEvidence(
        trend=trend,
        recent_rise=recent_rise,
        recent_rate=slope,
        retained_rise=retained_rise,
        spread=spread,
        deceleration=deceleration,
        points=n,
        span=span,
        significant=significant,
        retained=retained,
        growing=significant and retained and not slowing,
        decelerating=significant and retained and slowing,
        below_floor=(significant and beyond_spread and not above_floor and not slowing
                     and retained_rise >= BELOW_FLOOR_SHARE * min_total),
    )


def hidden_by_noise(x: np.ndarray, y: np.ndarray, evidence: GrowthEvidence) -> bool:
    """Whether a significant trend that failed the retained-level test may still be a leak the
    noise hides (then "inconclusive", not "no leak"; see ``HIDDEN_ENVELOPE_SHARE``).

    The retained level (a suffix minimum) has little power against independent noise: a
    +300 B/request leak under 20 KiB of noise rises 81 KiB over 270 requests, but the run's
    deepest dips sit within ~2.5 sigma of each other all along, so the level stays flat (measured:
    such series read "no leak" in 75 of 100 seeds; a real Flask leak under gunicorn, +666 B/request
    over 270 requests, once did). The tests here ask what the look-alikes cannot pass together:
    the low envelope rose with the trend (a sawtooth's and GC's lows return to base), the recent
    half can still be growing at the window's rate (a filled cache's cannot), and the residuals
    are nearly independent (a wandering deque's are not)."""
    trend = evidence.trend
    n = int(x.size)
    if (trend is None or not evidence.significant or n < MIN_POINTS
            or trend.low < HIDDEN_MIN_LOW_SHARE * trend.slope):
        return False
    third = n // 3
    distance = float(np.median(x[n - third:]) - np.median(x[:third]))
    low_first, low_last = np.percentile(y[:third], 10), np.percentile(y[n - third:], 10)
    if distance <= 0 or low_last - low_first < HIDDEN_ENVELOPE_SHARE * trend.slope * distance:
        return False
    half = n // 2
    recent = fit_trend(*_subsample(x[half:], y[half:], MAX_FIT_POINTS // 2))
    if recent is None or recent.high < HIDDEN_CONTINUES * trend.slope:
        return False
    residuals = y - (trend.intercept + trend.slope * x)
    residuals = residuals - residuals.mean()
    energy = float(np.dot(residuals, residuals))
    if energy <= 0:
        return False
    return float(np.dot(residuals[1:], residuals[:-1])) / energy < HIDDEN_MAX_AUTOCORRELATION
