"""Per-route attribution: which endpoint keeps the memory. Pure bookkeeping on plain values.

What a per-route number means. The web guard reads a cheap counter (native heap on CPU, the
allocator's allocated bytes on accelerators) at *cuts* (see :mod:`vramguard.adapters.ledger`):

- A request that ran alone (nothing else in flight from its start to the next request's start)
  is *measured*: its retained bytes are exactly the counter's change from its start to the next
  request's start (what it freed after sending its response is included). The route's series
  is the running sum of those deltas, and ``decide`` gives its verdict, as for any series.
- Requests that overlapped others (``overlapped``) are attributed statistically: every window
  between two cuts enters a regression of the counter's change on each route's requests
  (:mod:`vramguard.adapters.attribution`), which gives bytes per request with a 95% interval, or
  says the route's traffic cannot be told apart from another's (``collinear``).
- ``unsampled``: requests that ran alone but were not measured (the budget skipped the read, a
  diagnosis scan overlapped them, or, on CPU, they ran on their thread's first use: see
  ``WebGuard.begin``); they still count in the windows, but for those last two, whose windows
  have no delta.

:func:`combine` gives the route's verdict from both. The overall verdict (all requests, the
Guard's) does not depend on any of this.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from vramguard.adapters.attribution import NO_LEAK_MAX, Call, RouteEstimate
from vramguard.analysis.floor import Floor
from vramguard.analysis.keeper import Keeper
from vramguard.analysis.samples import Sample, SampleStore
from vramguard.analysis.verdict import Growth, Verdict, VerdictKind, decide
from vramguard.units import format_bytes

_RECENT = 64  # deltas a route's clipping range is taken from
_MIN_SPREAD = 256.0  # bytes: the robust deviation never counts as less (4 x: +- 1 KiB)
UNMATCHED = "<unmatched>"  # no route matched (404s): never the raw path, which is unbounded
OTHER = "<other>"          # routes beyond ``max_routes``


@dataclass(frozen=True, slots=True)
class RouteCounts:
    """How a route's requests were counted: all, measured alone, overlapped, not sampled
    (``requests == measured + overlapped + unsampled``)."""

    route: str
    requests: int
    measured: int
    overlapped: int
    unsampled: int
    retained_bytes: int

    def __str__(self) -> str:
        return (f"{self.route}: {self.requests} requests, {self.measured} measured alone "
                f"({self.overlapped} overlapped, {self.unsampled} not sampled), "
                f"retained {self.retained_bytes:+d} B")


@dataclass(slots=True)
class _Route:
    requests: int = 0
    overlapped: int = 0
    retained: int = 0
    measured: int = 0
    first_seen: float | None = None  # on the web guard's clock: for the route's request rate
    last_seen: float | None = None
    series: float = 0.0  # the running sum of clipped deltas (see RouteBook.measure)
    square: float = 0.0  # ... and of their squares: the bound on bytes/request (``upper``)
    clip: tuple[float, float] | None = None  # the clipping range, from ``recent``
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=_RECENT))
    samples: SampleStore = field(default_factory=lambda: SampleStore(512))
    verdict: Verdict | None = None
    verdict_key: int = -1
    # Holds the route's leak verdict while the process's memory keeps growing (own=False: the
    # samples it reads are the process's, the verdict is the route's).
    keeper: Keeper = field(default_factory=lambda: Keeper(own=False))


class RouteBook:
    """The per-route series. Not thread-safe: the caller (``WebGuard``) holds its lock."""

    def __init__(self, *, max_routes: int = 256, max_samples: int = 512) -> None:
        self._routes: dict[str, _Route] = {}
        self._max_routes = max_routes
        self._max_samples = max(16, max_samples)

    def _route(self, name: str) -> _Route:
        route = self._routes.get(name)
        if route is None:
            if len(self._routes) >= self._max_routes and name != OTHER:
                return self._route(OTHER)
            route = self._routes[name] = _Route(samples=SampleStore(self._max_samples))
        return route

    def count(self, name: str, *, overlapped: bool = False, now: float | None = None) -> int:
        """One request of ``name`` ended ``now`` (overlapping others or not); returns the
        route's requests so far."""
        route = self._routes.get(name) or self._route(name)  # hot path: one lookup
        route.requests += 1
        route.overlapped += overlapped
        if now is not None:
            if route.first_seen is None:
                route.first_seen = now
            route.last_seen = now
        return route.requests

    def rate(self, name: str) -> float | None:
        """The route's requests per second so far (None: too few to tell)."""
        route = self._routes[name]
        if route.first_seen is None or route.last_seen is None or route.requests < 2:
            return None
        span = route.last_seen - route.first_seen
        return (route.requests - 1) / span if span > 0 else None

    def measure(self, name: str, time: float, retained: int) -> None:
        """One counted request of ``name`` ran alone and kept ``retained`` bytes (may be
        negative). ``retained_bytes`` sums them as they are; the series the verdict reads clips
        a delta far outside the route's recent ones (beyond the median +- 4 robust deviations,
        at least +- 1 KiB): the heap counter sees the server's own I/O buffers (64 KiB that
        are alive at one cut and gone at the next), and two such spikes in a few dozen samples
        would otherwise read as steady growth. A leak is the typical delta, not the spike."""
        route = self._route(name)
        route.measured += 1
        route.retained += retained
        if route.measured % 16 == 1 or route.clip is None:  # refreshed every 16: hot path
            route.clip = _clip_range(route.recent)
        clipped = float(retained) if route.clip is None else min(
            max(float(retained), route.clip[0]), route.clip[1])
        route.series += clipped
        route.square += clipped * clipped
        route.recent.append(retained)
        # The (measured - 1)-th measured request; the store keeps the whole history evenly
        # thinned, in arrays allocated once (kept Samples would grow the heap counter).
        route.samples.add(Sample(request=route.measured - 1, time=time,
                                 allocated=round(route.series)))

    def upper(self, name: str) -> float | None:
        """The top of a 95% interval on the route's mean (clipped) bytes per measured request,
        or None with fewer than 2 measured requests: "no leak" must not be claimed when the
        noise leaves room for more than a few hundred bytes per request."""
        route = self._routes[name]
        n = route.measured
        if n < 2:
            return None
        mean = route.series / n
        variance = max(0.0, (route.square - n * mean * mean) / (n - 1))
        return mean + 1.96 * math.sqrt(variance / n)

    def names(self) -> list[str]:
        """Routes seen so far, in the order they first appeared."""
        return list(self._routes)

    def counts(self, name: str) -> RouteCounts:
        """The counters of one route."""
        route = self._routes[name]
        unsampled = max(0, route.requests - route.measured - route.overlapped)
        return RouteCounts(name, route.requests, route.measured, route.overlapped, unsampled,
                           route.retained)

    def samples(self, name: str) -> tuple[Sample, ...]:
        """The route's series: cumulative (clipped) retained bytes per measured request."""
        return tuple(self._routes[name].samples.samples)

    def verdict(self, name: str) -> Verdict:
        """The leak verdict on the route's series (cached until it gets a new sample)."""
        route = self._routes[name]
        last = route.samples.last_request
        key = -1 if last is None else last
        if route.verdict is None or key != route.verdict_key:
            route.verdict, route.verdict_key = decide(route.samples.samples), key
        return route.verdict


    def holding(self, name: str) -> bool:
        """Whether the route's keeper holds a leak verdict (it then needs the samples)."""
        return self._routes[name].keeper.holding

    def kept(self, name: str, verdict: Verdict, samples: Sequence[Sample],
             floor: Floor) -> Verdict:
        """The route's verdict to show, from its fresh one (``combine``'s) through the route's
        :class:`~vramguard.analysis.keeper.Keeper`: a leak verdict holds while the route's own
        data cannot tell and the process's memory (``samples``, with the signal's ``floor``)
        keeps growing since the route's leak was last seen; the route's own "no leak" ends it.
        """
        route = self._routes[name]
        keeper = route.keeper
        if keeper.floor != floor:
            keeper = replace(keeper, floor=floor)
        route.keeper, shown = keeper.keep(verdict, samples)
        return shown


def _clip_range(recent: deque[int]) -> tuple[float, float] | None:
    # Median +- 4 robust deviations of the recent deltas (None: too few to tell).
    if len(recent) < 8:
        return None
    values = np.fromiter(recent, dtype=float, count=len(recent))
    median = float(np.median(values))
    spread = max(1.4826 * float(np.median(np.abs(values - median))), _MIN_SPREAD)
    return median - 4 * spread, median + 4 * spread


def combine(exact: Verdict, estimate: RouteEstimate | None, requests: int, *,
            floor: float = 0.0, upper: float | None = None) -> Verdict:
    """A route's verdict from its exactly measured series (``exact``) and its attribution
    ``estimate`` over the windows (None: no window had it).

    A leak on either is a leak (the one with the evidence is reported); else "no leak" from
    either is no leak; else inconclusive with both reasons. Never a "no leak" from too little.
    ``floor``: bytes per request below which steady growth is not called a route's leak but
    inconclusive (the CPU heap counter also sees the server's own per-request bookkeeping,
    measured at 60-300 B/request on a clean FastAPI route; the overall verdict still sees it).
    ``upper``: the top of the 95% interval on the exact series' bytes per request; its "no
    leak" counts only when that, and the top of the series' trend interval, are at most
    ``NO_LEAK_MAX`` (a server's own buffers can move the counter by tens of KiB a request, which
    hides a kilobyte leak in a few hundred samples). Both: a free elsewhere that lands in a
    measured request pulls the mean down, not the trend's median slope; a ~1 KiB/request leak
    under waitress, trend +1.4 KiB/request, read "no leak" on the mean's bound alone
    (tests/integration/test_flask_pool_servers.py, 1 run in 6).
    """
    if exact.growth is not None:
        trend_top = exact.growth.ci95[1]
        upper = trend_top if upper is None else max(upper, trend_top)
    if (exact.kind is VerdictKind.NO_LEAK and floor > 0 and upper is not None
            and upper > NO_LEAK_MAX):
        exact = Verdict(VerdictKind.INCONCLUSIVE, exact.requests, exact.warmup, None, None,
                        exact.start_bytes, exact.end_bytes, exact.capacity_bytes,
                        exact.warnings,
                        f"no steady growth over the measured requests, but at this noise up "
                        f"to {format_bytes(upper)}/request is possible (no leak needs at most "
                        f"{format_bytes(NO_LEAK_MAX)})")
    call = Call.INCONCLUSIVE if estimate is None else estimate.call
    if exact.kind is VerdictKind.LEAK:
        return _floored(exact, floor)
    if estimate is not None and call is Call.LEAK:
        return _floored(_from_estimate(VerdictKind.LEAK, estimate, requests), floor)
    if exact.kind is VerdictKind.NO_LEAK:
        return exact
    if estimate is not None and call is Call.NO_LEAK:
        return _from_estimate(VerdictKind.NO_LEAK, estimate, requests)
    if exact.kind is not VerdictKind.INCONCLUSIVE:
        return exact  # cache growth and friends: what the exact series says
    windows = "no attribution window yet" if estimate is None else f"windows: {estimate.reason}"
    reason = f"measured alone: {exact.reason}; {windows}"
    return Verdict(VerdictKind.INCONCLUSIVE, requests, 0, None, None, None, None, None, (),
                   reason)


def _floored(verdict: Verdict, floor: float) -> Verdict:
    growth = verdict.growth
    if growth is None or growth.bytes_per_request >= floor:
        return verdict
    return Verdict(VerdictKind.INCONCLUSIVE, verdict.requests, verdict.warmup, None, growth,
                   verdict.start_bytes, verdict.end_bytes, verdict.capacity_bytes,
                   verdict.warnings,
                   f"the route's requests keep {growth}, below the "
                   f"{format_bytes(floor)}/request that the counter can tell from the server's "
                   f"own per-request memory")


def _from_estimate(kind: VerdictKind, estimate: RouteEstimate, requests: int) -> Verdict:
    growth = None
    if estimate.bytes_per_request is not None and estimate.ci95 is not None:
        growth = Growth(estimate.bytes_per_request, estimate.ci95, None, None, None)
    return Verdict(kind, requests, 0, None, growth, None, None, None, (),
                   f"attributed over {estimate.windows} windows of overlapping requests: "
                   f"{estimate.reason}")
