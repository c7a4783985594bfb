"""Statistical per-route attribution for overlapping requests. Pure: windows in, estimates out.

When requests overlap, no single reading belongs to one request. Instead the web guard cuts time
into *windows* (between two reads of a cheap memory counter) and records, for each window, how
much the counter changed and how many requests of each route ran in it (a request that spans
several windows is split between them in proportion to the time it spent in each, so a leak
allocated mid-request is not smeared into the wrong window). The model is

    delta_w = sum over routes r of  b_r * n_(w,r)  +  noise_w

and ``b_r``, the bytes a request of route ``r`` leaves behind, is fitted by non-negative least
squares (``scipy.optimize.nnls``: a route cannot retain a negative amount on average, and a burst
of frees, e.g. another thread's clean-up, can only pull estimates towards 0, never fabricate a
leak). The fit is weighted: a window's noise variance is taken as growing with the requests in
it (1 + requests). What the numbers mean:

- ``bytes_per_request``: the fitted ``b_r``, in bytes of the counter (native heap on CPU, the
  allocator's allocated bytes on accelerators), per request of the route, over all windows kept.
- ``ci95``: the 95% interval of the unconstrained least-squares fit (Student t on the residual
  variance), clipped at 0. Noise in one window (temporaries of requests in flight at its edges,
  the allocator's own caches) cancels between neighbouring windows, which the interval ignores:
  it errs wide. (Not a bootstrap of the NNLS fit: that under-covers when clean routes sit on the
  0 boundary.)
- A route is a ``leak`` when its least-squares estimate is at least ``LEAK_T`` standard errors
  above 0 over all windows and ``RECENT_T`` over the most recent half (memory it kept early and
  then stopped keeping is a filled cache, not a leak: that is ``inconclusive``). It is
  ``no_leak`` when enough windows were seen, the interval reaches 0 and its top is at most
  ``NO_LEAK_MAX`` bytes per request (noisy windows that allow kilobytes are ``inconclusive``).
- ``collinear``: when a route's request counts are (nearly) a combination of other routes'
  counts (e.g. a client that always calls ``/a`` then ``/b``), the data may not tell their bytes
  apart. Such routes are fitted apart too, unless exactly collinear: where that separate fit
  settles one of them (``leak``, or ``no_leak``), its estimates are reported (an idle server's
  one-request windows tell a client's strictly alternating routes apart); otherwise the routes
  are reported as one group, with the group's combined bytes per request in the reason, and no
  per-route estimate instead of a guess.

A transient that straddles a cut (tens of kilobytes held at one cut and freed by the next: the
server's I/O buffers, the worker's own route check) shows as two neighbouring windows that
cancel; they are fitted as one window (``_settled``), which keeps every route's total.

Memory that grows with time rather than with requests (a background thread) is, like any drift,
attributed to the routes in proportion to their traffic; the overall verdict is unaffected.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls
from scipy.stats import t as student_t

from vramguard.units import format_bytes

MIN_WINDOWS = 16          # windows with the route before any verdict
NO_LEAK_WINDOWS = 32      # ... before "no leak"
NO_LEAK_MAX = 512.0       # ... and at most this many bytes/request possible (95%)
MIN_REQUESTS = 24         # requests of the route before any verdict
COLLINEAR_BELOW = 0.1     # residual share of a route's counts below which it may not separate
EXACT_BELOW = 1e-3        # ... below which it cannot (fitted apart, it would be a guess)
TRANSIENT_MIN = 8192.0    # bytes: a window's delta this large, cancelled by the next, is one transient
MAX_COLUMNS = 32          # routes fitted separately; the rest share one column ("<rest>")
# A verdict is asked for again and again as windows accumulate: a 95% test would flag a clean
# route sooner or later. "Leak" needs t >= 4 over all windows (about 3e-5 one-sided per look)
# and the recent half still clearly positive (t >= 2: not a cache that filled and stopped).
LEAK_T = 4.0
RECENT_T = 2.0
_REST = "<rest>"


class Status(enum.StrEnum):
    """How a route's estimate came out."""

    ESTIMATED = "estimated"
    TOO_FEW = "too_few"        # too few windows or requests of the route yet
    COLLINEAR = "collinear"    # its traffic cannot be separated from other routes'


class Call(enum.StrEnum):
    """The per-route verdict the attribution supports (the closed vocabulary of the verdicts)."""

    LEAK = "leak"
    NO_LEAK = "no_leak"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Window:
    """One window: the counter's change (bytes) and each route's requests (fractional) in it."""

    delta: float
    counts: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class RouteEstimate:
    """One route's share of the counter's growth; see the module docstring for the meaning."""

    route: str
    status: Status
    call: Call
    bytes_per_request: float | None
    ci95: tuple[float, float] | None
    windows: int              # windows in which the route had requests
    requests: float           # the route's requests over those windows
    collinear_with: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        if self.bytes_per_request is None or self.ci95 is None:
            return f"{self.route}: {self.call.value} ({self.reason})"
        low, high = self.ci95
        return (f"{self.route}: {self.call.value}, "
                f"{format_bytes(self.bytes_per_request, signed=True)}/request (95% CI "
                f"{format_bytes(low, signed=True)} .. {format_bytes(high, signed=True)}) over "
                f"{self.windows} windows")


@dataclass(frozen=True, slots=True)
class Attribution:
    """Every route's estimate over ``windows`` windows."""

    windows: int
    routes: tuple[RouteEstimate, ...]

    def route(self, name: str) -> RouteEstimate | None:
        """The estimate of one route, or None when it had no requests in any window."""
        return next((r for r in self.routes if r.route == name), None)

    def __str__(self) -> str:
        return "\n".join([f"attribution over {self.windows} windows:"]
                         + [f"  {r}" for r in self.routes])


class WindowLog:
    """A bounded history of windows over the whole run: when full, neighbours are merged in pairs
    (a merged window is still a valid window of the model: deltas and counts add up)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = max(8, capacity)
        self._windows: list[Window] = []
        self.added = 0  # windows ever added (changes whenever the log does)

    def add(self, window: Window) -> None:
        """Append one finished window (not thread-safe: the caller holds its lock)."""
        self._windows.append(window)
        self.added += 1
        if len(self._windows) >= self._capacity:
            old = self._windows
            merged = [_merge(old[i], old[i + 1]) for i in range(0, len(old) - 1, 2)]
            if len(old) % 2:
                merged.append(old[-1])
            self._windows = merged

    def windows(self) -> tuple[Window, ...]:
        """The windows kept, oldest first."""
        return tuple(self._windows)


def _merge(a: Window, b: Window) -> Window:
    counts = dict(a.counts)
    for route, n in b.counts.items():
        counts[route] = counts.get(route, 0.0) + n
    return Window(a.delta + b.delta, counts)


def _settled(windows: Sequence[Window]) -> list[Window]:
    """``windows`` with each transient that straddled a cut folded into one window: two
    neighbours whose deltas have opposite signs, are both at least ``TRANSIENT_MIN`` and cancel
    to within half the larger (tens of kilobytes that something, e.g. the worker's own route
    check or the server's I/O buffers, held at one cut and freed by the next). Merging is
    always a valid window of the model (deltas and counts add up), so it cannot bias a
    route's bytes; but left apart, one such pair among a few hundred small windows inflated the
    residual variance so much that a route keeping 6.7 KiB a request read `inconclusive`
    (t < 4): 4 of 5 runs of tests/integration/test_asgi_e2e.py beside two busy loops."""
    settled: list[Window] = []
    index = 0
    while index < len(windows):
        window = windows[index]
        if index + 1 < len(windows):
            after = windows[index + 1]
            small = min(abs(window.delta), abs(after.delta))
            if (window.delta * after.delta < 0 and small >= TRANSIENT_MIN
                    and abs(window.delta + after.delta)
                    <= 0.5 * max(abs(window.delta), abs(after.delta))):
                settled.append(_merge(window, after))
                index += 2
                continue
        settled.append(window)
        index += 1
    return settled


def attribute(windows: Sequence[Window], *, collinear_below: float = COLLINEAR_BELOW
              ) -> Attribution:
    """Fit every route's bytes per request over ``windows`` (see the module docstring).

    Deterministic. Cost: two weighted least-squares fits and one NNLS of a windows x routes
    matrix, twice (all windows, the recent half; again for near-collinear routes), plus one per
    route for collinearity (about a millisecond at 1,000 windows and a few routes): call it when
    a verdict is asked for, never per request.
    """
    names, matrix, deltas = _design(_settled(windows))
    if not names:
        return Attribution(len(windows), ())
    scale = _row_scale(matrix)
    weighted = matrix * scale[:, None]
    coarse = _collinear_groups(weighted, collinear_below)
    coarse_fit = _GroupFit.of(matrix, deltas, scale, coarse)
    fine, fine_fit = coarse, coarse_fit
    if any(len(group) > 1 for group in coarse):
        fine = _collinear_groups(weighted, EXACT_BELOW)
        fine_fit = coarse_fit if fine == coarse else _GroupFit.of(matrix, deltas, scale, fine)
    present = matrix > 0

    def estimate(j: int, fit: _GroupFit, groups: list[list[int]]) -> RouteEstimate:
        g = next(i for i, group in enumerate(groups) if j in group)
        partners = tuple(names[k] for k in groups[g] if k != j)
        return _estimate(names[j], int(present[:, j].sum()), float(matrix[:, j].sum()),
                         partners, *fit.column(g))

    routes: list[RouteEstimate] = []
    for group in coarse:
        chosen = [estimate(j, coarse_fit, coarse) for j in group]
        if len(group) > 1:
            # Near-collinear traffic (a client alternating two routes: every window holds as
            # many of each, give or take one): fitted apart, the few windows that differ still
            # tell the routes apart when their noise is small (the exact one-request windows of
            # an idle server). The separate fit is used when it settles a route of the group
            # (leak, or no leak); otherwise the group is reported as one, not guessed.
            apart = [estimate(j, fine_fit, fine) for j in group]
            if (all(not e.collinear_with for e in apart)
                    and any(e.call is not Call.INCONCLUSIVE for e in apart)):
                chosen = apart
        routes.extend(e for e in chosen if e.route != _REST)
    return Attribution(len(windows), tuple(routes))


def _row_scale(matrix: np.ndarray) -> np.ndarray:
    """Each window's weight in the fit, as the square root that scales its row: a window's
    noise adds up over the requests in it (each one's temporaries, the allocator's caches), so
    its variance is taken as proportional to 1 + its requests. Unweighted, a 150-request window's
    noise drowned the exact one-request windows that tell two alternating routes apart."""
    return np.asarray(1.0 / np.sqrt(1.0 + matrix.sum(axis=1)))


@dataclass(frozen=True, slots=True)
class _GroupFit:
    """The fit of one grouping of the columns: per group, over all windows and the recent half."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    t: np.ndarray
    recent_t: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray, deltas: np.ndarray, scale: np.ndarray,
           groups: list[list[int]]) -> _GroupFit:
        columns = np.stack([matrix[:, g].sum(axis=1) for g in groups], axis=1)
        estimate, low, high, t = _fit(columns, deltas, scale)
        half = len(deltas) // 2
        recent_t = _fit(columns[half:], deltas[half:], scale[half:])[3]
        return cls(estimate, low, high, t, recent_t)

    def column(self, g: int) -> tuple[float, tuple[float, float], float, float]:
        return (float(self.estimate[g]), (float(self.low[g]), float(self.high[g])),
                float(self.t[g]), float(self.recent_t[g]))


def _design(windows: Sequence[Window]) -> tuple[list[str], np.ndarray, np.ndarray]:
    totals: dict[str, float] = {}
    for window in windows:
        for route, n in window.counts.items():
            if n > 0:
                totals[route] = totals.get(route, 0.0) + n
    ranked = sorted(totals, key=lambda r: -totals[r])
    names = ranked[:MAX_COLUMNS]
    if len(ranked) > MAX_COLUMNS:
        names.append(_REST)  # the long tail still explains its own bytes, as one column
    index = {name: j for j, name in enumerate(names)}
    rest = index.get(_REST)
    matrix = np.zeros((len(windows), len(names)))
    for i, window in enumerate(windows):
        for route, n in window.counts.items():
            j = index.get(route, rest)
            if j is not None and n > 0:
                matrix[i, j] += n
    deltas = np.fromiter((w.delta for w in windows), dtype=float, count=len(windows))
    return names, matrix, deltas


def _collinear_groups(matrix: np.ndarray, below: float) -> list[list[int]]:
    """Columns grouped so that each group's summed column can be separated from the others.

    A column whose part not explained by the other columns (least squares, no intercept: the
    model has none) is under ``below`` of its norm is joined to the columns that explain it.
    """
    columns = matrix.shape[1]
    parent = list(range(columns))

    def root(j: int) -> int:
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j

    norms = np.linalg.norm(matrix, axis=0)
    for j in range(columns):
        others = [k for k in range(columns) if k != j]
        if not others or norms[j] == 0:
            continue
        coef, *_ = np.linalg.lstsq(matrix[:, others], matrix[:, j], rcond=None)
        residual = matrix[:, j] - matrix[:, others] @ coef
        if np.linalg.norm(residual) >= below * norms[j]:
            continue
        for k, c in zip(others, coef, strict=True):
            if abs(c) * norms[k] >= below * norms[j]:
                parent[root(k)] = root(j)
    groups: dict[int, list[int]] = {}
    for j in range(columns):
        groups.setdefault(root(j), []).append(j)
    return list(groups.values())


def _padded(columns: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same NNLS problem with zero rows added up to the next power of two (a zero row adds
    nothing to the residual, so the solution is the same). Why: ``scipy.optimize.nnls`` keeps
    ~800 B of C heap for every new problem size it sees (measured, scipy 1.17), and the window
    count grows by one per cut: on the CPU heap counter that read as the server's own leak, of
    ~800 B per status read, over its first thousand requests. Powers of two bound the sizes to
    a dozen."""
    rows = len(deltas)
    size = 1 << max(0, rows - 1).bit_length()
    if size == rows:
        return columns, deltas
    padded = np.zeros((size, columns.shape[1]))
    padded[:rows] = columns
    return padded, np.concatenate([deltas, np.zeros(size - rows)])


def _fit(columns: np.ndarray, deltas: np.ndarray, scale: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(NNLS estimate, 95% low, 95% high, t statistic) per column; NaN without enough windows.

    Weighted (``scale``: :func:`_row_scale`). Not robust-reweighted on purpose: on an idle
    server most windows change the counter by exactly 0, a robust scale (MAD) collapses to 0,
    and a route's real but occasional leak (a tensor kept every 20th request) would be
    down-weighted as outliers into a false "no leak"; the web guard keeps the one known
    outlier, a route's first request warming its caches, out of the windows instead.
    The interval and t are the unconstrained least-squares ones (Student t, residual variance)
    of the weighted problem, clipped at 0. Not a bootstrap of the NNLS fit: with clean
    routes on the 0 boundary that bootstrap under-covers (80% measured for a nominal 95% on
    synthetic windows), the analytic interval does not (93-96%).
    """
    width = columns.shape[1]
    dof = len(deltas) - width
    if dof < 2:
        nan = np.full(width, np.nan)
        return nan, nan, nan, nan
    x = columns * scale[:, None]
    y = deltas * scale
    estimate = nnls(*_padded(x, y))[0]
    ols = np.linalg.lstsq(x, y, rcond=None)[0]
    residual = y - x @ ols
    variance = float(residual @ residual) / dof
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(x.T @ x)), 0.0, None) * variance)
    q = float(student_t.ppf(0.975, dof))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, ols / se, np.where(ols > 0, np.inf, 0.0))
    return (estimate, np.maximum(ols - q * se, 0.0), np.maximum(ols + q * se, 0.0), t)


def _estimate(name: str, windows: int, requests: float, partners: tuple[str, ...],
              value: float, ci: tuple[float, float], t: float, recent_t: float
              ) -> RouteEstimate:
    if windows < MIN_WINDOWS or requests < MIN_REQUESTS:
        return RouteEstimate(name, Status.TOO_FEW, Call.INCONCLUSIVE, None, None, windows,
                             requests, partners,
                             f"{windows} windows with {requests:.0f} requests of the route; "
                             f"at least {MIN_WINDOWS} windows and {MIN_REQUESTS} requests needed")
    if partners:
        shown = ", ".join(partners)
        return RouteEstimate(
            name, Status.COLLINEAR, Call.INCONCLUSIVE, None, None, windows, requests, partners,
            f"its traffic moves together with {shown}: the data cannot tell their bytes apart "
            f"(together {format_bytes(value, signed=True)} per request of the group, 95% CI "
            f"{format_bytes(ci[0], signed=True)} .. {format_bytes(ci[1], signed=True)})")
    per = f"{format_bytes(value, signed=True)}/request"
    if t >= LEAK_T and recent_t >= RECENT_T:
        call, reason = Call.LEAK, (f"its requests keep {per} (t = {t:.1f} over {windows} "
                                   f"windows, {recent_t:.1f} over the recent half)")
    elif ci[0] > 0:
        call, reason = Call.INCONCLUSIVE, (f"its requests kept {per} over all windows, but not "
                                           f"clearly in the recent half (a cache filling up?)")
    elif windows >= NO_LEAK_WINDOWS and ci[1] <= NO_LEAK_MAX:
        call, reason = Call.NO_LEAK, (f"no retention distinguishable from 0 over {windows} "
                                      f"windows: at most {format_bytes(ci[1])}/request (95%)")
    else:
        call, reason = Call.INCONCLUSIVE, (
            f"no retention distinguishable from 0 yet, but up to {format_bytes(ci[1])}/request "
            f"is possible; no leak needs {NO_LEAK_WINDOWS} windows and at most "
            f"{format_bytes(NO_LEAK_MAX)}/request at 95%")
    return RouteEstimate(name, Status.ESTIMATED, call, value, ci, windows, requests, (), reason)
