"""``WebGuard``: the framework-free core behind the ASGI, WSGI and Flask adapters.

Per request: ``begin()`` before the app runs and ``end(ticket, route)`` after it (hot path: a
clock read, a lock and counters; memory is read only on the Guard's and the route sampler's
cadence, see ``bench/web_overhead.py``). Every request is one Guard step (the overall verdict);
requests that ran alone are also attributed to their route (see :mod:`vramguard.adapters.routes`
for what per-route numbers mean). Nothing here raises into the request: a failure is logged once
and the request goes on unguarded.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from vramguard.adapters.health import Health, decide_health
from vramguard.adapters.options import WebOptions
from vramguard.adapters.routes import UNMATCHED, RouteBook, RouteCounts
from vramguard.adapters.window import RouteDiagnosis, Windows
from vramguard.analysis.suspects import Suspect, TensorGrowth
from vramguard.analysis.verdict import Verdict, VerdictKind, decide
from vramguard.guard import Guard, _Step
from vramguard.readers.census import Census, diff_groups
from vramguard.readers.device import Device, resolve_device
from vramguard.readers.sampler import Sampler

_log = logging.getLogger("vramguard")
_CUDA_CENSUS_EVERY = 16  # on accelerators the counters are the signal; censuses only name suspects
_VERDICT_EVERY_S = 1.0   # a route's verdict is checked (for a diagnosis window) at most this often


@dataclass(frozen=True, slots=True)
class Reading:
    """Live tensor bytes at one moment, and the census behind them when one was taken."""

    allocated: int | None
    census: Census | None


@dataclass(slots=True)
class Ticket:
    """What ``begin`` hands to ``end`` for one request."""

    step: _Step
    seq: int
    alone: bool
    before: Reading | None
    scan_epoch: int = 0  # the diagnosis window's scan epoch when the request began


@dataclass(frozen=True, slots=True)
class CleanupStats:
    """What the clean-up policy did: runs, bytes it gave back (None: unknown), time it cost."""

    runs: int = 0
    freed_bytes: int | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        freed = "unknown" if self.freed_bytes is None else f"{self.freed_bytes} B"
        return f"{self.runs} clean-ups freed {freed} in {self.seconds * 1000:.1f} ms"


class _SharedSampler(Sampler):
    """A Sampler whose census is reused while no request began or ended since it was taken.

    The route reads (before/after a request) and the Guard's own census then cost one census, not
    two or three. "Nothing began or ended" is the owner's ``generation`` counter; memory that
    background threads change while the server is idle is thus seen by the next reading.
    """

    def __init__(self, device: Device, generation: Callable[[], int]) -> None:
        super().__init__(device)
        self._generation = generation
        self._cached: tuple[int, Census] | None = None

    def census(self, *, groups: bool = True, follow_graphs: bool = True) -> Census:
        del follow_graphs  # routes need the full census (graphs included), so it is always taken
        generation = self._generation()
        cached = self._cached
        if cached is not None and cached[0] == generation and (cached[1].grouped or not groups):
            return cached[1]
        census = super().census(groups=True)  # grouped costs the same, and routes need groups
        if self._generation() == generation:  # nothing began or ended while it ran
            self._cached = (generation, census)
        return census


class WebGuard:
    """One guarded web app: the Guard, per-route series, clean-up and health.

    ``overhead_budget``/``warmup``/``census_every`` go to the :class:`~vramguard.guard.Guard`;
    ``overhead_budget=None`` reads memory around every request that runs alone (a verdict in
    ~100 requests, for tests and load tests; milliseconds per request on CPU).
    """

    def __init__(
        self,
        device: str = "auto",
        *,
        overhead_budget: float | None = 0.01,
        warmup: int | None = None,
        census_every: int | None = None,
        options: WebOptions | None = None,
        clock: Callable[[], float] = time.perf_counter,
        windows: Windows | None = None,
    ) -> None:
        self._generation = 0  # +1 whenever a request begins or ends: see _SharedSampler
        # The diagnosis window's scans (another thread) change what is alive, so they too make
        # a cached census stale: both counters only grow, so their sum changes with either.
        self._sampler = _SharedSampler(resolve_device(device),
                                       lambda: self._generation + self._windows.scan_epoch)
        # One budget for the whole web guard: half for the Guard's own reads, half for the
        # before/after pairs that attribute memory to routes (see _pair_period).
        self.guard = Guard(device, overhead_budget=None if overhead_budget is None
                           else overhead_budget * 0.5, warmup=warmup,
                           census_every=census_every, clock=clock, sampler=self._sampler)
        self.options = options or WebOptions()
        self._budget = overhead_budget
        self._clock = clock
        self._lock = threading.Lock()
        self._routes = RouteBook(max_routes=self.options.max_routes)
        self._in_flight = 0
        self._seq = 0
        self._pairs = 0
        self._since_pair = 0
        self._pair_cost = 0.0     # EWMA: seconds for the before + after reads of one request
        self._request_time = 0.0  # EWMA: seconds per request
        self._since_cleanup = 0
        self._cleanup = CleanupStats()
        self._broken = False
        self._logged: set[str] = set()
        # Diagnosis windows (see adapters/window.py): ``windows`` is injectable for tests.
        self._windows = windows or Windows(self.options.diagnose_requests,
                                           self.options.diagnose_every, clock)
        self._verdict_checked: dict[str, float] = {}

    # -- per request (hot path) -----------------------------------------------------------------
    def begin(self) -> Ticket | None:
        """Call before the app handles a request; never raises (None: not guarded)."""
        if self._broken:
            return None
        try:
            with self._lock:
                self._seq += 1
                alone = self._in_flight == 0
                self._in_flight += 1
                self._since_pair += 1
                due = alone and self._since_pair >= self._pair_period()
                if due:
                    self._since_pair = 0
                    self._pairs += 1
                with_census = self.guard.device.is_cpu or self._pairs % _CUDA_CENSUS_EVERY == 1
                ticket = Ticket(self.guard.step(), self._seq, alone, None,
                                self._windows.scan_epoch)
            # The reads stay outside the Guard's step, so they do not inflate its step time.
            if due:
                ticket.before = self._read(with_census)
            with self._lock:
                self._generation += 1
            ticket.step.__enter__()
            return ticket
        except Exception:
            self._fail("begin")
            return None

    def end(self, ticket: Ticket | None, route: str | None) -> None:
        """Call after the app handled the request (response sent); never raises."""
        if ticket is None:
            return
        try:
            name = route or UNMATCHED
            with self._lock:
                self._generation += 1
            ticket.step.__exit__(None, None, None)
            before = ticket.before
            after = None
            if before is not None and self._seq == ticket.seq:  # nothing else began meanwhile
                after = self._read(before.census is not None)
            with self._lock:
                self._in_flight -= 1
                alone = ticket.alone and self._seq == ticket.seq
                # A diagnosis scan holds references to every live tensor while it runs: the
                # request's reading would include them, so it is not attributed (unsampled).
                epoch = self._windows.scan_epoch
                scanned = epoch % 2 == 1 or epoch != ticket.scan_epoch
                quiet = self._in_flight == 0
                self._request_time = _ewma(self._request_time,
                                           self._clock() - ticket.step._started)
                retained = None
                if (alone and not scanned and before is not None and after is not None
                        and before.allocated is not None and after.allocated is not None):
                    retained = after.allocated - before.allocated
                else:
                    self._routes.count(name, overlapped=not alone, unsampled=alone)
            if retained is not None and before is not None and after is not None:
                groups = None
                if before.census is not None and after.census is not None:
                    groups = diff_groups(before.census, after.census)
                with self._lock:
                    self._routes.measure(name, self._clock(), retained, groups)
                self._maybe_diagnose(name)
            if self._windows.open:
                self._windows.ended(name)
            if quiet:
                self._maybe_cleanup()
        except Exception:
            self._fail("end")

    # -- diagnosis windows ------------------------------------------------------------------------
    @property
    def diagnosing(self) -> bool:
        """True while a diagnosis window is open (hot path: adapters test it before ``track``)."""
        return self._windows.open

    def track(self, route: str | None) -> AbstractContextManager[None]:
        """Enter around the handler, in its thread, to record allocation sites while ``route`` is
        under diagnosis (a no-op context otherwise; never raises)."""
        return self._windows.track(route)

    def _maybe_diagnose(self, name: str) -> None:
        # Deciding costs milliseconds at hundreds of samples: at most once a second per route,
        # and only when a window could open. The window itself runs in its own thread.
        now = self._clock()
        if (name == UNMATCHED or not self._windows.due(name)
                or now - self._verdict_checked.get(name, float("-inf")) < _VERDICT_EVERY_S):
            return
        self._verdict_checked[name] = now
        try:
            with self._lock:
                samples = self._routes.samples(name)
            if decide(samples, find_detection=False).kind is VerdictKind.LEAK:
                with self._lock:
                    grown = self._routes.grown(name)
                self._windows.start(name, grown)
        except Exception:  # diagnosis is extra: it stops, the guard and the request go on
            self._windows.fail("deciding whether to open a window")

    def diagnosis(self, route: str) -> RouteDiagnosis | None:
        """The latest finished diagnosis window of ``route`` (None: none yet)."""
        return self._windows.result(route)

    def _pair_period(self) -> int:
        if self._budget is None or self._pairs < 4:
            return 1
        allowed = self._budget * 0.5 * max(self._request_time, 1e-6)
        return max(1, math.ceil(self._pair_cost / allowed))

    def _read(self, with_census: bool) -> Reading:
        started = time.perf_counter()
        try:
            census = self._sampler.census() if with_census else None
            if self.guard.device.is_cpu:
                return Reading(None if census is None else census.total_bytes, census)
            return Reading(self._sampler.read(0, 0.0).allocated, census)
        finally:
            # half a pair: the EWMA tracks one pair as two reads
            self._pair_cost = _ewma(self._pair_cost, 2 * (time.perf_counter() - started))

    # -- clean-up -------------------------------------------------------------------------------
    def _maybe_cleanup(self) -> None:
        options = self.options
        if options.cleanup_every is None and options.cleanup_above is None:
            return
        with self._lock:
            self._since_cleanup += 1
            due = options.cleanup_every is not None and self._since_cleanup >= options.cleanup_every
        if not due and options.cleanup_above is not None and not self.guard.device.is_cpu:
            sample = self._sampler.read(0, 0.0)
            if sample.reserved is not None and sample.allocated is not None:
                due = sample.reserved - sample.allocated > options.cleanup_above
        if due:
            self.cleanup()

    def cleanup(self) -> CleanupStats:
        """Run gc and release the allocator's cached blocks now; returns the running totals."""
        def level() -> int | None:
            if self.guard.device.is_cpu:
                return self._sampler.read(0, 0.0).device_used  # RSS: what the host gets back
            return self._sampler.read(0, 0.0).reserved
        before = level()
        started = time.perf_counter()
        gc.collect()
        if not self.guard.device.is_cpu:
            from vramguard._torch import require_torch
            from vramguard.release import empty_cache

            empty_cache(require_torch(), self.guard.device)
        cost = time.perf_counter() - started
        after = level()
        with self._lock:
            old = self._cleanup
            freed = None if before is None or after is None or (
                old.runs and old.freed_bytes is None) else (old.freed_bytes or 0) + before - after
            self._cleanup = CleanupStats(old.runs + 1, freed, old.seconds + cost)
            self._since_cleanup = 0
            return self._cleanup

    # -- results --------------------------------------------------------------------------------
    @property
    def cleanups(self) -> CleanupStats:
        """Running totals of the clean-up policy."""
        return self._cleanup

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return self._in_flight

    def verdict(self) -> Verdict:
        """The overall verdict over every request."""
        return self.guard.verdict()

    def suspects(self, limit: int = 5) -> tuple[Suspect, ...]:
        """Overall growing tensor groups (only when the overall verdict is a leak)."""
        if self.verdict().kind is not VerdictKind.LEAK:
            return ()
        return tuple(Suspect(TensorGrowth(g.device, g.dtype, g.shape, g.requires_grad, g.grad_fn,
                                          count, size, g.in_graph))
                     for g, count, size in self.guard.growing_tensors(limit=limit))

    def routes(self) -> list[RouteCounts]:
        """Counters of every route seen so far."""
        with self._lock:
            return [self._routes.counts(name) for name in self._routes.names()]

    def route_verdict(self, route: str) -> Verdict:
        """The verdict on one route's measured requests (KeyError for a route never seen)."""
        with self._lock:
            return self._routes.verdict(route)

    def route_suspects(self, route: str, limit: int = 5) -> tuple[Suspect, ...]:
        """One route's suspects (leaks only): diagnosed (allocation site, root, cause, fix) once
        its diagnosis window finished, else the tensor groups that grew over its requests."""
        with self._lock:
            if self._routes.verdict(route).kind is not VerdictKind.LEAK:
                return ()
            grown = self._routes.suspects(route, limit)
        diagnosis = self._windows.result(route)
        if diagnosis is not None and diagnosis.suspects:
            return diagnosis.suspects[:limit]
        return grown

    def health(self) -> Health:
        """Whether a liveness probe should pass (see :func:`decide_health`)."""
        options = self.options
        return decide_health(self.verdict(), self.guard.samples, self._clock(),
                             within=options.unhealthy_within, limit=options.unhealthy_limit,
                             above=options.unhealthy_above, above_for=options.unhealthy_for)

    def _fail(self, where: str) -> None:
        # The service must not notice: log the first failure of each kind with its traceback and
        # stop guarding, rather than failing (or slowing) every later request the same way.
        self._broken = True
        if where not in self._logged:
            self._logged.add(where)
            _log.warning("vramguard: the web guard failed in %s; requests go on unguarded", where,
                         exc_info=True)


def _ewma(old: float, new: float) -> float:
    return new if old == 0.0 else old + (new - old) * 0.2
