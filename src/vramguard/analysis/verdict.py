"""The leak verdict: from a series of memory samples to leak / cache growth / ... / no leak.

Pure: takes :class:`~vramguard.analysis.samples.Sample` values, returns a :class:`Verdict`. Each
metric is analysed over the samples where it was measured (the CPU census runs every K requests,
other counters every request), after a warm-up that is ignored (optimizer state on step 1, lazy
buffers). Whether a metric grows *steadily* is decided by
:func:`~vramguard.analysis.steady_growth.steady_growth`, which is built not to be fooled by
caches, flushes, noise and garbage-collector cycles.

Priority when several metrics grow: leak (allocated) > non_torch_growth (device used beyond what
PyTorch reserved) > fragmentation > cache_growth; the lower findings become warnings.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vramguard.analysis.floor import EXACT, Floor
from vramguard.analysis.samples import Sample
from vramguard.analysis.steady_growth import (
    MIN_POINTS,
    GrowthEvidence,
    hidden_by_noise,
    steady_growth,
)
from vramguard.analysis.trend import fit_trend, time_to_reach
from vramguard.units import format_bytes, format_duration

_MIB = 1024 * 1024
_DETECTION_PREFIXES = 40
_DETECTION_COARSE_STEP = 4
_DETECTION_FIT_POINTS = 100
_RATE_FIT_POINTS = 100


class VerdictKind(enum.StrEnum):
    """What the memory series says. ``cache_growth`` and ``fragmentation`` are warnings, not
    failures (``vramguard check`` exits 0 for them)."""

    LEAK = "leak"
    CACHE_GROWTH = "cache_growth"
    FRAGMENTATION = "fragmentation"
    NON_TORCH_GROWTH = "non_torch_growth"
    # Judged by vramguard.distributed.groups over the live process-group count, not by decide().
    PROCESS_GROUP_GROWTH = "process_group_growth"
    NO_LEAK = "no_leak"
    INCONCLUSIVE = "inconclusive"

    @property
    def label(self) -> str:
        """Human words: ``cache growth``."""
        return self.value.replace("_", " ")


def _count(value: float) -> str:
    """``850`` or ``1.1e6``: request counts to full are estimates, two digits are plenty."""
    if value < 10_000:
        return f"{value:.0f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True, slots=True)
class Growth:
    """Growth of the metric that decided the verdict (allocated for a leak, reserved for cache
    growth, ...). ``*_to_full`` are None when the capacity is unknown and inf when not growing."""

    bytes_per_request: float
    ci95: tuple[float, float]
    bytes_per_second: float | None
    requests_to_full: float | None
    seconds_to_full: float | None

    def __str__(self) -> str:
        low, high = self.ci95
        text = (
            f"{format_bytes(self.bytes_per_request, signed=True)}/request "
            f"(95% CI {format_bytes(low, signed=True)} .. {format_bytes(high, signed=True)})"
        )
        if self.requests_to_full is None:
            return text
        if math.isinf(self.requests_to_full):
            return f"{text}, never full at this rate"
        seconds = ""
        if self.seconds_to_full is not None:
            seconds = f" / {format_duration(self.seconds_to_full)}"
        return f"{text}, full in {_count(self.requests_to_full)} requests{seconds}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict over a run of ``requests`` requests, ignoring the first ``warmup``.

    ``detected_after`` is the request at which the evidence first sufficed (None for no_leak and
    inconclusive, or when detection was not asked for). ``start_bytes``/``end_bytes`` are the
    deciding metric's first and last post-warm-up values.
    """

    kind: VerdictKind
    requests: int
    warmup: int
    detected_after: int | None
    growth: Growth | None
    start_bytes: int | None
    end_bytes: int | None
    capacity_bytes: int | None
    warnings: tuple[str, ...]
    reason: str
    below_floor: bool = False
    """Inconclusive because the growth was steady but under the signal's floor (a longer run,
    see :meth:`requests_to_clear`, would tell)."""
    floor: float = 0.0
    """The least growth over the window that could count as a leak, for ``below_floor``."""
    floor_rate: float = 0.0
    """For a ``below_floor`` verdict whose recent half grew slower than the signal's per-request
    floor: that floor (0 when the growth was too small for the window floor only)."""

    noisy: bool = False
    """Inconclusive because a significant trend, as large as the floors count, may be a leak
    that the noise hides (a run twice as long would tell: the rise doubles, the noise does not)."""

    def requests_to_clear(self) -> int | None:
        """For a ``below_floor`` verdict: requests past the warm-up over which the growth seen
        would clear the floor (None otherwise, when it did not grow, or when it grew slower than
        ``floor_rate``: no longer run at the same rate clears that). For a ``noisy`` one: twice
        the window this run had."""
        if self.noisy:
            return 2 * max(1, self.requests - self.warmup)
        if not self.below_floor or self.growth is None or self.growth.bytes_per_request <= 0:
            return None
        if self.floor_rate > 0:
            return None
        return math.ceil(self.floor / self.growth.bytes_per_request)

    @property
    def is_leak(self) -> bool:
        """True for the verdicts that fail a check: a leak, growth outside PyTorch, or process
        groups that are never destroyed."""
        return self.kind in (VerdictKind.LEAK, VerdictKind.NON_TORCH_GROWTH,
                             VerdictKind.PROCESS_GROUP_GROWTH)

    def __str__(self) -> str:
        if self.kind in (VerdictKind.NO_LEAK, VerdictKind.INCONCLUSIVE) or self.growth is None:
            head = f"{self.kind.label} after {self.requests} requests: {self.reason}"
        else:
            head = f"{self.kind.label}: {self.growth}"
            if self.detected_after is not None:
                head += f"; detected after request {self.detected_after}"
        if self.warnings:
            head += f" ({len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''})"
        return head


def auto_warmup(requests: int) -> int:
    """Requests to ignore at the start: 10% of the run, at most 100 (and none for tiny runs).

    10% covers optimizer state and lazy buffers created in the first steps; the cap keeps a long
    running service's window growing rather than discarding ever more of it.
    """
    if requests <= 0:
        return 0
    return min(requests // 10, 100)


_Getter = Callable[[Sample], "int | None"]


def _outside_torch(sample: Sample) -> int | None:
    # On CPU there is no caching allocator (reserved is None); RSS - live tensor bytes is then
    # what the process holds outside PyTorch's tensors.
    torch_bytes = sample.reserved if sample.reserved is not None else sample.allocated
    if sample.device_used is None or torch_bytes is None:
        return None
    return sample.device_used - torch_bytes


@dataclass(frozen=True, slots=True)
class _Metric:
    """One series to test, in priority order, with the least growth that can count."""

    kind: VerdictKind
    name: str
    get: _Getter
    min_total: float


ALLOCATED_MIN_GROWTH = 1024.0
"""The least growth of ``allocated`` over a window that can ever count (any signal's floor is at
least this): byte-level jitter on a flat exact series is no leak."""

# Priority order: the first that grows decides. Minimums: allocated is exact (the census) or
# 512-byte granular, so 1 KiB over the window (byte-level jitter on a flat series is no leak);
# reserved grows in >= 2 MiB segments; RSS and driver-level used memory move in pages and by
# allocator whims, so a few MiB over the window before it counts.
_METRICS = (
    _Metric(VerdictKind.LEAK, "allocated memory", lambda s: s.allocated, ALLOCATED_MIN_GROWTH),
    _Metric(VerdictKind.NON_TORCH_GROWTH, "memory outside PyTorch", _outside_torch, 4 * _MIB),
    _Metric(VerdictKind.FRAGMENTATION, "inactive split memory", lambda s: s.inactive_split,
            2 * _MIB),
    _Metric(VerdictKind.FRAGMENTATION, "allocation retries", lambda s: s.alloc_retries, 2.0),
    _Metric(VerdictKind.CACHE_GROWTH, "reserved memory", lambda s: s.reserved, 2 * _MIB),
)


def _series(samples: Sequence[Sample], get: _Getter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(request, time, value) arrays over the samples where the metric was measured."""
    rows = [(s.request, s.time, v) for s in samples if (v := get(s)) is not None]
    if not rows:
        empty = np.empty(0)
        return empty, empty, empty
    data = np.asarray(rows, dtype=float)
    return data[:, 0], data[:, 1], data[:, 2]


def _growth(
    evidence: GrowthEvidence,
    times: np.ndarray,
    values: np.ndarray,
    end_level: float,
    capacity: int | None,
) -> Growth | None:
    trend = evidence.trend
    if trend is None:
        return None
    rate = None
    if times.size > _RATE_FIT_POINTS:
        idx = np.unique(np.linspace(0, times.size - 1, _RATE_FIT_POINTS).round().astype(np.intp))
        times, values = times[idx], values[idx]
    time_trend = fit_trend(times, values)
    if time_trend is not None:
        rate = time_trend.slope
    requests_to_full = seconds_to_full = None
    if capacity is not None:
        requests_to_full = time_to_reach(end_level, capacity, trend.slope)
        if rate is not None:
            seconds_to_full = time_to_reach(end_level, capacity, rate)
    return Growth(trend.slope, (trend.low, trend.high), rate, requests_to_full, seconds_to_full)


def _detect(x: np.ndarray, y: np.ndarray, min_total: float, min_rate: float) -> int | None:
    """The request at which ``steady_growth`` first holds on a prefix of the series.

    ~40 prefixes on an even grid, scanned coarse-to-fine (every 4th, then the three before the
    first hit) to keep ``decide`` cheap; exact if the evidence only ever accumulates, and at most
    one coarse step late otherwise.
    """
    ends = np.unique(np.linspace(MIN_POINTS, x.size, _DETECTION_PREFIXES).round().astype(np.intp))

    def holds(end: int) -> bool:
        return steady_growth(x[:end], y[:end], min_total=min_total, min_rate=min_rate,
                             fit_points=_DETECTION_FIT_POINTS, always_fit=False).growing

    coarse = list(range(_DETECTION_COARSE_STEP - 1, ends.size, _DETECTION_COARSE_STEP))
    if not coarse or coarse[-1] != ends.size - 1:
        coarse.append(ends.size - 1)
    previous = -1
    for j in coarse:
        if holds(int(ends[j])):
            for k in range(previous + 1, j):
                if holds(int(ends[k])):
                    return int(x[ends[k] - 1])
            return int(x[ends[j] - 1])
        previous = j
    return None


def _reason(kind: VerdictKind, metric: str, evidence: GrowthEvidence, first: int, last: int) -> str:
    growth = format_bytes(evidence.total_growth, signed=True)
    retained = format_bytes(evidence.retained_rise, signed=True)
    window = f"requests {first}..{last}"
    if kind is VerdictKind.LEAK:
        return (f"allocated memory grew steadily by {growth} over {window}, and the level it "
                f"never gave back rose by {retained} in the second half")
    if kind is VerdictKind.NON_TORCH_GROWTH:
        return (f"memory outside PyTorch (device used beyond what PyTorch holds) grew steadily "
                f"by {growth} over {window}")
    if kind is VerdictKind.FRAGMENTATION:
        if metric == "allocation retries":
            retries = f"{evidence.total_growth:+.0f} retries"
            return (f"the allocator retried allocations ever more often ({retries} over "
                    f"{window}): memory is too fragmented to satisfy requests")
        return (f"inactive split blocks (fragmentation) grew by {growth} over {window} while "
                f"allocated memory did not")
    return (f"reserved memory grew by {growth} over {window} while allocated memory did not: "
            f"the caching allocator keeps more free blocks, which is not a leak")


def _no_leak_reason(evidence: GrowthEvidence, first: int, last: int) -> str:
    window = f"over requests {first}..{last}"
    if evidence.trend is None:
        return f"allocated memory did not grow {window}"
    slope = f"{format_bytes(evidence.trend.slope, signed=True)}/request"
    if evidence.decelerating:
        return (f"allocated memory grew ({slope}) {window} but ever more slowly, like a bounded "
                f"cache filling up")
    if evidence.significant:
        return (f"allocated memory trended {slope} {window}, but the level it retains did not "
                f"keep rising in the recent half (a filled cache, a flush cycle or noise)")
    return f"allocated memory did not grow steadily {window} (trend {slope}, within the noise)"


def _unearned_no_leak(evidence: GrowthEvidence, floor: float, rate: float) -> str | None:
    """Why a series that failed the leak test has not earned "no leak" either (None: it has).

    Only for floored signals (the CPU heap counter), whose floor hides small growth on purpose:
    a series that passes every test of steady growth but the floor (``below_floor``) is a leak
    too small or too young to clear it, or the heap's own churn; the data cannot tell which, and
    a longer run will (a leak keeps rising and clears the floor). Noise, sawtooths, GC cycles
    and filling caches fail the other tests and stay "no leak". Measured: a sparse leak of
    ~23 KiB in all, under the 16 KiB floor once fitted, was called "no leak" in one of three
    suite runs on a loaded machine.
    """
    if floor <= 0 or not evidence.below_floor or evidence.trend is None:
        return None
    if evidence.recent_rate < rate:
        return (f"allocated memory grew steadily ({format_bytes(evidence.recent_rate, signed=True)}"
                f"/request over the recent half of the window) but slower than the "
                f"{format_bytes(rate)}/request the counter needs to tell a leak from the heap's "
                f"own drift; too little to call a leak, too steady to rule one out")
    return (f"allocated memory grew steadily ({format_bytes(evidence.trend.slope, signed=True)}"
            f"/request, {format_bytes(evidence.total_growth, signed=True)} over the window) but "
            f"less than the {format_bytes(floor)} the counter needs to tell a leak from its own "
            f"churn; too little to call a leak, too steady to rule one out: a longer run would "
            f"tell")


def _hidden_leak(evidence: GrowthEvidence, x: np.ndarray, y: np.ndarray, floor: float,
                 rate: float) -> str | None:
    """Why a significant trend that failed the retained-level test has not earned "no leak"
    (None: it has): growth as large as the floors count, which the noise may hide (see
    :func:`~vramguard.analysis.steady_growth.hidden_by_noise`). A longer run tells: a leak keeps
    rising out of the noise."""
    trend = evidence.trend
    if (trend is None or trend.slope < rate or evidence.total_growth < floor
            or not hidden_by_noise(x, y, evidence)):
        return None
    return (f"allocated memory trended {format_bytes(trend.slope, signed=True)}/request "
            f"({format_bytes(evidence.total_growth, signed=True)} over requests "
            f"{int(x[0])}..{int(x[-1])}), but the noise (spread "
            f"{format_bytes(evidence.spread)}) hides whether the level it retains rose: too "
            f"noisy to call a leak, too steady to rule one out; a longer run would tell")


def decide(
    samples: Sequence[Sample],
    *,
    warmup: int | None = None,
    capacity_bytes: int | None = None,
    find_detection: bool = True,
    floor: Floor = EXACT,
) -> Verdict:
    """The verdict over ``samples`` (one per request or step, in any order).

    ``warmup``: requests to ignore at the start (None: :func:`auto_warmup`). ``capacity_bytes``:
    what "full" means (None: the last sample's ``device_total``, else unknown).
    ``find_detection``: also find ``detected_after`` (a few more fits on prefixes).
    ``floor``: the signal's :class:`~vramguard.analysis.floor.Floor`, the least growth of
    ``allocated`` over the window (and per request of its recent half) that can count as a leak
    (none for exact series; the sampler's for the CPU heap counter, 16 KiB and 256 B/request,
    which also moves with Python's own allocations).
    Cost: a few ms on 300 samples; fits are subsampled so 1000 samples cost about the same.
    """
    ordered = sorted(samples, key=lambda s: s.request)
    requests = ordered[-1].request + 1 if ordered else 0
    warm = auto_warmup(requests) if warmup is None else max(0, warmup)
    if capacity_bytes is None:
        capacity_bytes = next(
            (s.device_total for s in reversed(ordered) if s.device_total is not None), None
        )
    window = [s for s in ordered if s.request >= warm]
    end_used = next((s.device_used for s in reversed(window) if s.device_used is not None), None)

    def verdict(kind: VerdictKind, reason: str, *, warnings: Sequence[str] = (),
                growth: Growth | None = None, values: np.ndarray | None = None,
                detected: int | None = None) -> Verdict:
        start = end = None
        if values is not None and values.size:
            start, end = int(values[0]), int(values[-1])
        return Verdict(kind, requests, warm, detected, growth, start, end, capacity_bytes,
                       tuple(warnings), reason)

    x, t, y = _series(window, _METRICS[0].get)
    if x.size < MIN_POINTS:
        measured = "no samples" if x.size == 0 else f"only {x.size} sample{'s' * (x.size > 1)}"
        return verdict(
            VerdictKind.INCONCLUSIVE,
            f"{measured} of allocated memory after a warm-up of {warm} "
            f"request{'s' * (warm != 1)}; "  # h12: "1 request", not "1 requests"
            f"at least {MIN_POINTS} are needed",
            values=y,
        )

    warnings: list[str] = []
    least = max(_METRICS[0].min_total, float(floor.window_bytes))
    rate = float(floor.bytes_per_step)
    allocated = steady_growth(x, y, min_total=least, min_rate=rate)
    decided: tuple[_Metric, GrowthEvidence, np.ndarray, np.ndarray, np.ndarray] | None = None
    for metric in _METRICS:
        if metric is _METRICS[0]:
            mx, mt, my, evidence = x, t, y, allocated
        else:
            mx, mt, my = _series(window, metric.get)
            evidence = steady_growth(mx, my, min_total=metric.min_total, always_fit=False)
        if evidence.decelerating and metric.kind in (VerdictKind.LEAK,
                                                     VerdictKind.NON_TORCH_GROWTH):
            warnings.append(
                f"{metric.name} grew by {format_bytes(evidence.total_growth, signed=True)} but is "
                f"slowing down (last third at {evidence.deceleration:.0%} of the first third's "
                f"rate): a bounded cache filling up? A longer run would tell"
            )
        if not evidence.growing:
            continue
        if decided is None:
            decided = (metric, evidence, mx, mt, my)
        elif metric.kind not in (decided[0].kind, VerdictKind.CACHE_GROWTH):
            # A leak also grows reserved memory; that is no news. Anything else is.
            also = _reason(metric.kind, metric.name, evidence, int(mx[0]), int(mx[-1]))
            warnings.append(f"also: {also}")

    if decided is None:
        growth = _growth(allocated, t, y, end_used if end_used is not None else y[-1],
                         capacity_bytes)
        doubt = _unearned_no_leak(allocated, least, rate)
        if doubt is not None:
            return replace(verdict(VerdictKind.INCONCLUSIVE, doubt, warnings=warnings,
                                   growth=growth, values=y), below_floor=True, floor=least,
                           floor_rate=rate if allocated.recent_rate < rate else 0.0)
        hidden = _hidden_leak(allocated, x, y, least, rate)
        if hidden is not None:
            return replace(verdict(VerdictKind.INCONCLUSIVE, hidden, warnings=warnings,
                                   growth=growth, values=y), noisy=True)
        return verdict(VerdictKind.NO_LEAK, _no_leak_reason(allocated, int(x[0]), int(x[-1])),
                       warnings=warnings, growth=growth, values=y)
    metric, evidence, mx, mt, my = decided
    growth = _growth(evidence, mt, my, end_used if end_used is not None else my[-1],
                     capacity_bytes)
    least, rate = (least, rate) if metric is _METRICS[0] else (metric.min_total, 0.0)
    detected = _detect(mx, my, least, rate) if find_detection else None
    return verdict(metric.kind, _reason(metric.kind, metric.name, evidence, int(mx[0]),
                                        int(mx[-1])),
                   warnings=warnings, growth=growth, values=my, detected=detected)


def after_collection(verdict: Verdict, live_at_warmup: int | None,
                     live_at_end: int | None) -> Verdict:
    """Re-judge a leak verdict with the live bytes measured right after full ``gc.collect()``s at
    the end of the warm-up and at the end of the run.

    Tensors in unreachable reference cycles count as live until the collector's oldest generation
    runs, which in a large process can take thousands of requests: the series then grows like a
    leak. If what the run retained across collections is less than half of the growth the series
    showed, that growth was garbage waiting for the collector: no leak, with a warning (the
    cycles still cost memory between collections). Pure; anything but a leak verdict is returned
    unchanged.
    """
    if verdict.kind is not VerdictKind.LEAK or live_at_warmup is None or live_at_end is None:
        return verdict
    if verdict.start_bytes is None or verdict.end_bytes is None:
        return verdict
    grown = verdict.end_bytes - verdict.start_bytes
    retained = live_at_end - live_at_warmup
    if grown <= 0 or retained > grown / 2:
        return verdict
    warning = (
        f"memory grew by {format_bytes(grown, signed=True)} but garbage collections gave back all "
        f"but {format_bytes(max(0, retained))}: reference cycles hold tensors until the collector "
        "runs (break the cycles, or call gc.collect())"
    )
    return replace(
        verdict,
        kind=VerdictKind.NO_LEAK,
        detected_after=None,
        warnings=(*verdict.warnings, warning),
        reason=f"the growth was garbage: across full collections the run retained "
        f"{format_bytes(retained, signed=True)} of {format_bytes(grown, signed=True)}",
    )
