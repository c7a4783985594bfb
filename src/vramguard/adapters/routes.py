"""Per-route attribution: which endpoint keeps the memory. Pure bookkeeping on plain values.

What a per-route number means (the honest version): a request is *measured* only when it ran
alone, i.e. no other request was in flight when it began and none began before it ended. Its
retained bytes are then exactly "live tensor bytes after it minus before it". A route's series is
the running sum of those deltas over its measured requests, and its verdict is the ordinary leak
verdict on that series (x = the route's measured requests). Requests that overlapped others are
counted as ``overlapped`` and never attributed: under constant concurrency a route may have few
or no measured requests and its verdict stays inconclusive rather than wrong. Requests skipped by
the sampling cadence are counted as ``unsampled``. The overall verdict (all requests) does not
depend on any of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramguard.analysis.samples import Sample
from vramguard.analysis.suspects import Suspect, TensorGrowth
from vramguard.analysis.verdict import Verdict, VerdictKind, decide
from vramguard.readers.census import TensorGroup

UNMATCHED = "<unmatched>"  # no route matched (404s): never the raw path, which is unbounded
OTHER = "<other>"          # routes beyond ``max_routes``
_MAX_GROUPS = 64           # tensor groups remembered per route; the smallest are dropped


@dataclass(frozen=True, slots=True)
class RouteCounts:
    """How a route's requests were counted: all, measured alone, overlapped, not sampled."""

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
    unsampled: int = 0
    retained: int = 0
    samples: list[Sample] = field(default_factory=list)
    groups: dict[TensorGroup, tuple[int, int]] = field(default_factory=dict)
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

    def count(self, name: str, *, overlapped: bool = False, unsampled: bool = False) -> None:
        """One request of ``name`` that was not measured (or is about to be, see ``measure``)."""
        route = self._route(name)
        route.requests += 1
        route.overlapped += overlapped
        route.unsampled += unsampled

    def measure(self, name: str, time: float, retained: int,
                groups: list[tuple[TensorGroup, int, int]] | None = None) -> None:
        """One request of ``name`` that ran alone and kept ``retained`` bytes (may be negative)."""
        route = self._route(name)
        route.requests += 1
        route.retained += retained
        index = len(route.samples) and route.samples[-1].request + 1
        route.samples.append(Sample(request=index, time=time, allocated=route.retained))
        if len(route.samples) >= self._max_samples:
            route.samples = route.samples[::2]  # keep the whole history at half the resolution
        for group, count, size in groups or ():
            old_count, old_size = route.groups.get(group, (0, 0))
            route.groups[group] = (old_count + count, old_size + size)
        if len(route.groups) > _MAX_GROUPS:
            kept = sorted(route.groups.items(), key=lambda item: item[1][1], reverse=True)
            route.groups = dict(kept[:_MAX_GROUPS // 2])

    def names(self) -> list[str]:
        """Routes seen so far, in the order they first appeared."""
        return list(self._routes)

    def counts(self, name: str) -> RouteCounts:
        """The counters of one route."""
        route = self._routes[name]
        return RouteCounts(name, route.requests, len(route.samples) and route.samples[-1].request + 1,
                           route.overlapped, route.unsampled, route.retained)

    def samples(self, name: str) -> tuple[Sample, ...]:
        """The route's series: cumulative retained bytes per measured request."""
        return tuple(self._routes[name].samples)

    def verdict(self, name: str) -> Verdict:
        """The leak verdict on the route's series (cached until it gets a new sample)."""
        route = self._routes[name]
        key = route.samples[-1].request if route.samples else -1
        if route.verdict is None or key != route.verdict_key:
            route.verdict, route.verdict_key = decide(route.samples), key
        return route.verdict

    def grown(self, name: str) -> list[tuple[TensorGroup, int, int]]:
        """(group, count growth, bytes growth) of the route's groups that grew, largest first."""
        return sorted(((g, c, b) for g, (c, b) in self._routes[name].groups.items() if b > 0),
                      key=lambda item: item[2], reverse=True)

    def suspects(self, name: str, limit: int = 5) -> tuple[Suspect, ...]:
        """Tensor groups that grew over the route's measured requests, largest first (leaks only)."""
        if self.verdict(name).kind is not VerdictKind.LEAK:
            return ()
        grown = self.grown(name)
        return tuple(
            Suspect(TensorGrowth(g.device, g.dtype, g.shape, g.requires_grad, g.grad_fn, c, b,
                                 g.in_graph))
            for g, c, b in grown[:limit]
        )
