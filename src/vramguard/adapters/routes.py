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
- ``unsampled``: requests that ran alone but were not measured (the budget skipped the read, or
  a diagnosis scan overlapped them); they still count in the windows.

:func:`combine` gives the route's verdict from both. The overall verdict (all requests, the
Guard's) does not depend on any of this.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vramguard.adapters.attribution import Call, RouteEstimate
from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import Growth, Verdict, VerdictKind, decide
from vramguard.units import format_bytes

_RECENT = 64  # deltas a route's clipping range is taken from
_MIN_SPREAD = 256.0  # bytes: the robust deviation never counts as less (8 x: +- 2 KiB)
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
    series: float = 0.0  # the running sum of clipped deltas (see RouteBook.measure)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=_RECENT))
    samples: list[Sample] = field(default_factory=list)
    verdict: Verdict | None = None
    verdict_key: int = -1


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
            route = self._routes[name] = _Route()
        return route

    def count(self, name: str, *, overlapped: bool = False) -> None:
        """One request of ``name`` ended (overlapping others or not)."""
        route = self._route(name)
        route.requests += 1
        route.overlapped += overlapped

    def measure(self, name: str, time: float, retained: int) -> None:
        """One counted request of ``name`` ran alone and kept ``retained`` bytes (may be
        negative). ``retained_bytes`` sums them as they are; the series the verdict reads clips
        a delta far outside the route's recent ones (beyond the median +- 8 robust deviations,
        at least +- 2 KiB): the heap counter sees the server's own I/O buffers (64 KiB that
        are alive at one cut and gone at the next), and two such spikes in a few dozen samples
        would otherwise read as steady growth. A leak is the typical delta, not the spike."""
        route = self._route(name)
        route.measured += 1
        route.retained += retained
        route.series += _clip(retained, route.recent)
        route.recent.append(retained)
        index = len(route.samples) and route.samples[-1].request + 1
        route.samples.append(Sample(request=index, time=time, allocated=round(route.series)))
        if len(route.samples) >= self._max_samples:
            route.samples = route.samples[::2]  # keep the whole history at half the resolution

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
        return tuple(self._routes[name].samples)

    def verdict(self, name: str) -> Verdict:
        """The leak verdict on the route's series (cached until it gets a new sample)."""
        route = self._routes[name]
        key = route.samples[-1].request if route.samples else -1
        if route.verdict is None or key != route.verdict_key:
            route.verdict, route.verdict_key = decide(route.samples), key
        return route.verdict


def _clip(delta: int, recent: deque[int]) -> float:
    if len(recent) < 8:
        return float(delta)
    values = np.fromiter(recent, dtype=float, count=len(recent))
    median = float(np.median(values))
    spread = max(1.4826 * float(np.median(np.abs(values - median))), _MIN_SPREAD)
    return min(max(float(delta), median - 8 * spread), median + 8 * spread)


def combine(exact: Verdict, estimate: RouteEstimate | None, requests: int, *,
            floor: float = 0.0) -> Verdict:
    """A route's verdict from its exactly measured series (``exact``) and its attribution
    ``estimate`` over the windows (None: no window had it).

    A leak on either is a leak (the one with the evidence is reported); else "no leak" from
    either is no leak; else inconclusive with both reasons. Never a "no leak" from too little.
    ``floor``: bytes per request below which steady growth is not called a route's leak but
    inconclusive (the CPU heap counter also sees the server's own per-request bookkeeping,
    measured at 60-300 B/request on a clean FastAPI route; the overall verdict still sees it).
    """
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
