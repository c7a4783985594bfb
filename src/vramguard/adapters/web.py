"""``WebGuard``: the framework-free core behind the ASGI, WSGI and Flask adapters.

Per request: ``begin()`` before the app runs and ``end(ticket, route)`` after it (hot path: a
clock read, a lock and counters, and now and then one read of the cheap counter, see
``bench/web_overhead.py``). Every request is one Guard step (the overall verdict). For the
routes, the counter is read at *cuts* (:mod:`vramguard.adapters.ledger`), as the budget affords:

- on an idle server, a sampled request gets a cut at its start and one at the next request's
  start: an exact measurement of what it kept. Which requests are sampled is jittered
  (deterministically) so that a client alternating two routes still samples both.
- under concurrency, a cut every ``_OVERLAP_CUT`` ended requests (or fewer, per the budget); the
  windows between cuts feed the statistical attribution (:mod:`vramguard.adapters.attribution`).

See :mod:`vramguard.adapters.routes` for what per-route numbers mean. Nothing here raises into
the request: a failure is logged once and the request goes on unguarded.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, cast

from vramguard.adapters.attribution import Attribution, RouteEstimate, Window, WindowLog, attribute
from vramguard.adapters.checker import Worker
from vramguard.adapters.cleanup import Cleanup, CleanupStats
from vramguard.adapters.counter import Counter
from vramguard.adapters.health import Health, decide_health, hold
from vramguard.adapters.ledger import Finished, Ledger
from vramguard.adapters.options import WebOptions
from vramguard.adapters.routes import UNMATCHED, RouteBook, RouteCounts, combine
from vramguard.adapters.window import RouteDiagnosis, Windows, WindowState
from vramguard.analysis.suspects import Suspect, TensorGrowth
from vramguard.analysis.verdict import Verdict, VerdictKind, decide
from vramguard.guard import Guard
from vramguard.readers.device import resolve_device
from vramguard.readers.heap import fill_seconds, prime_thread_cache
from vramguard.readers.sampler import Sampler
from vramguard.sampling import ACCOUNT_SHARE, cost_estimate

_log = logging.getLogger("vramguard")
_OVERLAP_CUT = 8  # under concurrency, a cut (one counter read) every 8 requests that ended
_ATTRIBUTION_EVERY_S = 1.0  # the windows' fit is recomputed at most this often
_VERDICT_EVERY_S = 1.0   # a route's verdict is checked (for a diagnosis window) at most this often
# The cuts' share of the budget; the Guard's account gets the rest. Each cut is a reading of
# the overall verdict too (Guard.observe), and the Guard reads only a read period after the last
# reading, so most of what its own reads took is theirs now: with half each, the Guard's 40
# reads over 3,000 requests of bench/web_routes.py's app cost as much as the 54 cuts beside
# them (0.46% and 0.50%), and the first census was never affordable. The Guard's part pays for
# the censuses and the readings the cuts leave out.
_CUT_SHARE = 0.8
# ... and all routes' checks together take at most this share of the budget in CPU time, as
# measured. The Guard's account and the cuts each spend at most 0.9 of their shares
# (sampling.ACCOUNT_SHARE): the checks take 5% of what is left, so the three stay within the
# budget together.
# A check costs 2-5 ms here: at the 1% default, one (of any route) every 4-10 s; a window
# opens at most every ``diagnose_every`` (600 s) per route anyway.
_CHECK_SHARE = 0.05


@dataclass(slots=True)
class Ticket:
    """What ``begin`` hands to ``end`` for one request."""

    seq: int
    alone: bool
    window: int     # the attribution window it began in (see adapters/ledger.py)
    started: float  # on the web guard's clock
    fresh: bool = False  # the request runs on its thread's first use (see WebGuard.begin)


class WebGuard:
    """One guarded web app: the Guard, per-route series, clean-up and health.

    ``overhead_budget``/``warmup``/``census_every`` go to the :class:`~vramguard.guard.Guard`
    (a fifth of the budget, for its censuses and the readings the cuts leave out; the route
    cuts get the rest, ``_CUT_SHARE``). ``overhead_budget=None`` cuts at
    every request, so each request that runs alone is measured exactly (a leaking route's
    verdict within ~60 requests: for tests and load tests). ``counter`` (the cheap counter),
    ``clock`` and ``windows`` are injectable for tests.
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
        counter: Counter | None = None,
    ) -> None:
        self._sampler = Sampler(resolve_device(device))
        # Work a request asks for runs here, never on the request's thread (adapters/checker.py).
        self._worker = Worker(self._background, name="vramguard-web")
        # One budget for the whole web guard: most for the cuts that attribute memory to
        # routes (see _cut_period), the rest for the Guard's own reads and censuses.
        self.guard = Guard(device, overhead_budget=None if overhead_budget is None
                           else overhead_budget * (1.0 - _CUT_SHARE), warmup=warmup,
                           census_every=census_every, clock=clock, sampler=self._sampler,
                           # h10: the web guard runs its own per-route diagnosis windows
                           diagnose="never", unit="request",
                           # A census is one C pass over the whole heap (tens to hundreds of ms):
                           # inside a request it is that request's latency, all of it. Taken on
                           # the worker instead, paid from the same budget; see Guard.
                           defer_census=self._defer_census,
                           # Requests are not alike: a read period that aliases with the
                           # route order (a client alternating two routes, an even period)
                           # puts one route after every read, and the routes' difference in
                           # time would read as the reads' cost, and thin the cuts for nothing.
                           after_effects=False)
        self.options = options or WebOptions()
        self._budget = overhead_budget
        self._clock = clock
        self._lock = threading.Lock()
        self._routes = RouteBook(max_routes=self.options.max_routes)
        self._in_flight = 0
        self._seq = 0
        # Attribution (see adapters/ledger.py and adapters/attribution.py): ``counter`` is
        # injectable for tests; by default the device's cheap counter.
        self._counter = counter or Counter(self.guard.device)
        # A cut's reading is a sample of the overall verdict too (Guard.observe), where it reads
        # the Guard's own signal: not an injected counter's.
        self._observe = counter is None
        self._ledger = Ledger(clock())
        self._log = WindowLog()
        self._cuts = 0
        self._busy = 0         # +1 as each worker job starts and ends (see _background)
        self._kept = 0         # ... and +1 as a census job starts and ends
        self._gap = 1          # requests (begun since the last cut) until the next sample
        self._closing = False  # the last cut opened a sample: the next idle start closes it
        self._jitter = random.Random(0)
        self._read_cost = 0.0     # seconds one cut costs (read and bookkeeping)
        self._cuts_spent = 0.0    # seconds all cuts cost
        self._fills_spent = 0.0   # ... of which the heap fillings inside their reads
        self._last_reading: int | None = None  # the last cut's counter value
        self._attribution: tuple[int, float, Attribution] | None = None  # (added, at, result)
        self._request_time = 0.0  # EWMA: seconds per request
        self._cleaner = Cleanup(self.options, self.guard.device, self._sampler)
        self._broken = False
        self._logged: set[str] = set()
        # Marks the threads that already ran a request, where the counter is the CPU heap (see
        # begin). Thread-local, so a thread's mark dies with it: a new thread that gets a dead
        # one's ident is still fresh. An attribute test, where a WeakSet's membership test made
        # a weak reference per request (4x the cost, measured).
        self._seen: threading.local | None = (
            threading.local() if self.guard.device.is_cpu else None)
        # The clean-up policy has nothing to do after each request unless it is configured.
        self._cleans = (self.options.cleanup_every is not None
                        or self.options.cleanup_above is not None)
        self.fresh_thread_requests = 0
        # Diagnosis windows (see adapters/window.py): ``windows`` is injectable for tests.
        self._windows = windows or Windows(self.options.diagnose_requests,
                                           self.options.diagnose_every, clock)
        self._verdict_checked: dict[str, float] = {}
        self._next_check = float("-inf")  # no route check before this (the checks' budget)
        # The last unhealthy answer and the verdict behind it (None: the overall one), held until
        # that verdict says no leak (see health()).
        self._unhealthy: tuple[str | None, Health | None] = (None, None)

    # -- per request (hot path) -----------------------------------------------------------------
    def begin(self) -> Ticket | None:
        """Call before the app handles a request; never raises (None: not guarded).

        Hot path: a clock read and a lock; when a cut is due (a sampled request starting on an
        idle server, or ``_OVERLAP_CUT`` requests ended since the last cut), one read of the
        cheap counter (on CPU 5-130 us in a server, as ``mallinfo2`` walks the free chunks; one
        allocator call on CUDA), paid out of the budget.
        """
        if self._broken:
            return None
        try:
            with self._lock:
                self._seq += 1
                alone = self._in_flight == 0
                self._in_flight += 1
                now = self._clock()
                ledger = self._ledger
                closing, self._closing = self._closing, False
                if alone and (closing or (ledger.begun_since_cut >= self._gap
                                          and self._sample_paid())):
                    self._cut(now)
                    if not closing:  # this request is sampled: the next start closes it
                        self._closing = True
                        self._gap = self._next_gap()
                elif not alone and ledger.ended_since_cut >= max(
                        _OVERLAP_CUT, self._cut_period()) and self._affords(1):
                    self._cut(now)
                window = ledger.begin()
                fresh = self._fresh_thread()
                if fresh:
                    ledger.taint(window)
                return Ticket(self._seq, alone, window, now, fresh)
        except Exception:
            self._fail("begin")
            return None

    def end(self, ticket: Ticket | None, route: str | None) -> None:
        """Call after the app handled the request (response sent); never raises.

        Hot path: a clock read, a lock and the request's share of the windows it ran in; a cut
        when enough overlapping requests ended since the last one.
        """
        if ticket is None:
            return
        try:
            name = route or UNMATCHED
            # One clock read ends both the Guard's step and the request's window. A read the
            # Guard takes now is after it, outside the request's time, as the response is.
            now = self._clock()
            self.guard.end_step(ticket.started, now)
            with self._lock:
                self._in_flight -= 1
                # The mean request time (an EWMA, inline: hot path).
                took, mean = now - ticket.started, self._request_time
                self._request_time = took if mean == 0.0 else mean + (took - mean) * 0.2
                alone = ticket.alone and self._seq == ticket.seq
                first = self._routes.count(name, overlapped=not alone, now=now) == 1
                if ticket.fresh or first:
                    # A route's first request warms its caches (36 KiB on /clean of the
                    # bench's app, tests/integration/targets/web_apps.py, against ~2.7 KiB a
                    # /leak request keeps: measured), and a fresh
                    # thread's too (see _fresh_thread): one such window outweighed a hundred
                    # ordinary ones in the route fit.
                    self._ledger.taint(ticket.window)
                finished = self._ledger.end(ticket.window, ticket.started, now, name)
                if finished:
                    self._book(finished)
                if self._in_flight and self._ledger.ended_since_cut >= max(
                        _OVERLAP_CUT, self._cut_period()) and self._affords(1):
                    self._cut(now)
                quiet = self._in_flight == 0
            if now >= self._next_check:  # the checks' budget (_check_route): most stop here
                self._maybe_diagnose(name, now)
            if self._windows.open:
                self._windows.ended(name)
            if quiet and self._cleans:
                self._cleaner.quiet()
        except Exception:
            self._fail("end")

    def _fresh_thread(self) -> bool:
        # Under the lock. On CPU a request on its thread's first use is not measured: a fresh
        # thread's glibc tcache fills as the request frees chunks, and mallinfo2 counts it as in
        # use until the thread exits, after the request's window closed. Under a
        # thread-per-request server (Werkzeug's threaded dev server) every clean request read
        # +1-3 KiB of it, which the route's series summed into a false leak (the Flask e2e
        # test, 1 full suite in 3). Pool threads (a threadpool, gunicorn's gthread) lose only
        # their first request.
        seen = self._seen
        if seen is None or getattr(seen, "ran", False):
            return False
        seen.ran = True
        self.fresh_thread_requests += 1
        return True

    def _cut(self, now: float) -> None:
        # Under the lock. The read stays outside the Guard's step: it does not inflate its time.
        # Its cost is CPU time: on a loaded machine the wall clock also counts the time the
        # thread waited for a core, which the read did not cost the service.
        # What a cut costs is the read *and* the bookkeeping of the windows it finishes (the
        # route's series, the window log): 15-20 us beside a 5 us read here; budgeting the read
        # alone cut 3-4x as often as the budget affords (bench/web_overhead.py).
        started, filled = time.thread_time(), fill_seconds()
        value = self._counter.read()
        self._cuts += 1
        if value is not None:
            self._last_reading = value
        epoch = self._windows.scan_epoch
        self._book(self._ledger.cut(now, value, epoch, self._busy, self._kept))
        if self._observe and epoch % 2 == 0:  # no diagnosis window's records on the heap
            self.guard.observe(value)
        cost = time.thread_time() - started
        self._cuts_spent += cost
        # A filling of the heap's holes inside the read is paid, but it is no cut's price:
        # the cuts after it are the cheaper for it (readers/heap.py).
        filling = min(cost, fill_seconds() - filled)
        self._fills_spent += filling
        self._read_cost = cost_estimate(self._read_cost, cost - filling)  # the Guard's rule

    def _book(self, finished: list[Finished]) -> None:
        # Under the lock: exact windows feed their route's series, every usable one the log.
        for window in finished:
            if window.delta is None:
                continue
            if window.exact is not None:
                self._routes.measure(window.exact, window.end, window.delta)
            if window.quiet:
                # Not one cut while the worker's job ran, nor one a census ran in: a route
                # check's temporaries alive at a cut and a census's baseline are tens to
                # hundreds of kilobytes on the heap counter, which the fit (unlike the
                # route's series, which clips) took as the routes' noise: a server's first
                # census put 270 KB in one window, and a route keeping 6.7 KiB a request read
                # "inconclusive" (tests/integration/test_asgi_e2e.py beside two busy loops, 3
                # runs in 8). A window that held a whole route check stays: at the default
                # budget those are the long windows between sampled requests, a quarter of
                # them and most of the requests, and leaving them out delayed the route
                # verdicts by ~150 requests (bench/web_routes.py --work 100).
                self._log.add(Window(float(window.delta), window.counts))

    def _cut_period(self) -> int:
        # Requests per cut that the budget affords: the cuts' share of the web guard's budget
        # (``_CUT_SHARE``), with the Guard's headroom for costs that vary; dense mode cuts every
        # request.
        if self._budget is None or self._cuts < 4:
            return 1
        allowed = self._budget * _CUT_SHARE * ACCOUNT_SHARE * max(self._request_time, 1e-7)
        return max(1, math.ceil(self._cut_cost() / allowed))

    def _cut_cost(self) -> float:
        # What the budget prices one cut at: the cuts' mean cost, or the running estimate where
        # a recent dear cut made that higher. Not the estimate alone: it believes a cheaper cut
        # at once, and a cut's CPU time has no preemption in it to discount; spaced by it, the
        # cuts spent 0.62-0.91% of request time against their 0.5% (measured in-process beside
        # a 1 ms handler, 500-3,000 requests). Not their after-effect: requests are too unlike
        # each other to measure it (see __init__).
        if not self._cuts:  # before the first: the counter's guess (Counter.first_read_guess_s)
            return self._counter.first_read_guess_s
        return max(self._read_cost, (self._cuts_spent - self._fills_spent) / self._cuts)

    def _affords(self, cuts: int) -> bool:
        # Under the lock. Whether the cuts' share of the request time so far pays for ``cuts``
        # more at their price, paid before they run (as the Guard's censuses are): no cut
        # otherwise, but the one that closes a sampled request (opened only if it affords both).
        # The period alone spaces cuts by their cost once it is known, but the first four come
        # at once (to learn it), and a server's first cuts are its dearest (0.3-0.65 ms each in
        # a fresh uvicorn server, cold caches beside sub-millisecond requests): paid after the
        # fact, the status's overhead read 0.95-1.85% at 500 requests (bench/web_routes.py).
        if self._budget is None:
            return True
        allowed = self._budget * _CUT_SHARE * ACCOUNT_SHARE * self.guard.step_time_s
        return self._cuts_spent + cuts * self._cut_cost() <= allowed

    def _sample_paid(self) -> bool:
        # Under the lock, when the gap to the next sampled request has passed: whether the
        # budget pays for its two cuts now; if not, the gap moves on to about when it will (at
        # the mean request time), so the requests meanwhile do not ask again each time (a
        # server whose first cut is not paid yet asked at every request: +10-14 us a request
        # beside a 1 ms handler, bench/web_overhead.py --paired --budget 1e-6).
        if self._affords(2):
            return True
        if self._budget is not None and self._request_time > 0:
            share = self._budget * _CUT_SHARE * ACCOUNT_SHARE
            owed = (self._cuts_spent + 2 * self._cut_cost()
                    - share * self.guard.step_time_s)
            wait = math.ceil(owed / (share * self._request_time))
            self._gap = self._ledger.begun_since_cut + min(1024, max(1, wait))
        return False

    def _next_gap(self) -> int:
        # Requests until the next sampled one on an idle server. A sample costs two cuts, so
        # the gap is drawn from [1, 3] x the requests per cut the budget affords (mean 2), from
        # a seeded generator so runs repeat, and so that no route order (a client alternating
        # /a and /b) aliases with it. 1 when the budget affords a cut per request.
        period = self._cut_period()
        if period <= 1:
            return 1
        return max(1, round(period * self._jitter.uniform(1.0, 3.0)))

    # -- diagnosis windows ------------------------------------------------------------------------
    @property
    def diagnosing(self) -> bool:
        """True while a diagnosis window is open (hot path: adapters test it before ``track``)."""
        return self._windows.open

    def track(self, route: str | None) -> AbstractContextManager[None]:
        """Enter around the handler, in its thread, to record allocation sites while ``route`` is
        under diagnosis (a no-op context otherwise; never raises)."""
        return self._windows.track(route)

    def _maybe_diagnose(self, name: str, now: float) -> None:
        # Hot path: at most once a second per route, and only when a window could open, ask the
        # worker to check the route. The check (decide + the attribution's NNLS, 2-5 ms) ran here
        # before, on the request that happened to end a second after the last one: that
        # request's latency, one in ~1,000 at 1 ms requests, i.e. the p99.9. The window itself
        # runs in its own thread, and measures what grew there (a census at its start and end).
        # (The caller has tested the checks' budget, ``_next_check``.)
        if (now - self._verdict_checked.get(name, float("-inf")) < _VERDICT_EVERY_S
                or name == UNMATCHED or not self._windows.due(name)):
            return
        self._verdict_checked[name] = now
        self._worker.ask(("route", name))

    def _background(self, job: Hashable) -> None:
        # The worker's thread (adapters/checker.py): an exception here stops the worker, which
        # says so once; the requests never see it. Jobs: ("route", name), ("census", groups,
        # follow_graphs).
        kind, *args = cast("tuple[Any, ...]", job)
        started = time.perf_counter()
        keeps = kind == "census"  # its baseline stays on the heap
        with self._lock:  # odd while the job runs: the windows cut meanwhile are not quiet
            self._busy += 1
            self._kept += keeps
        try:
            if self.guard.device.is_cpu:
                # This thread's analysis frees lists sized by the sample count into its own
                # glibc tcache, which the heap counter counts: fill it once, as the Guard's
                # threads do.
                prime_thread_cache()
            if kind == "route":
                self._check_route(args[0])
            elif not self.guard.run_deferred_census(groups=args[0], follow_graphs=args[1]):
                return
        finally:
            with self._lock:
                self._busy += 1
                self._kept += keeps
        # The record's thread name says where it ran (the tests).
        _log.debug("vramguard: %s %s done in %.1f ms", kind, args,
                   (time.perf_counter() - started) * 1e3)

    def _check_route(self, name: str) -> None:
        # Whether the route's verdict opens a diagnosis window. The series is copied under the
        # lock and decided outside it, as RouteBook.verdict decides it (without the detection
        # point, which the kind does not need: half the cost): a request's begin/end must not
        # wait milliseconds for the lock while this runs. On the worker it still competes for
        # the GIL with the requests, so its CPU time is budgeted: the next check of any route
        # waits until the checks' share of the budget has paid for this one.
        started = time.thread_time()
        try:
            with self._lock:
                samples = self._routes.samples(name)
                requests = self._routes.counts(name).requests
                upper = self._routes.upper(name)
            estimate = self.attribution(fresh=False).route(name)
            exact = decide(samples, find_detection=False)
            if self._combine(exact, estimate, requests, upper).kind is VerdictKind.LEAK:
                self._windows.start(name, None)
        finally:
            if self._budget is not None:
                cost = time.thread_time() - started
                self._next_check = self._clock() + cost / (self._budget * _CHECK_SHARE)

    def _defer_census(self, groups: bool, follow_graphs: bool) -> bool:
        return self._worker.ask(("census", groups, follow_graphs))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background worker (the ASGI lifespan's shutdown calls it; idempotent). The
        guard goes on counting requests; route checks and censuses then run no more."""
        self._worker.close(timeout)

    def reopen(self) -> None:
        """Let the background worker run again after :meth:`close` (the ASGI lifespan's startup
        calls it, so an app served twice in one process keeps its route checks)."""
        self._worker.reopen()

    @property
    def worker_alive(self) -> bool:
        """True while the background worker's thread runs (it starts at the first job)."""
        return self._worker.alive

    @property
    def worker_failure(self) -> str | None:
        """Why the background worker stopped on its own (None: it did not): route checks no
        longer open diagnosis windows, the Guard takes no census; verdicts go on."""
        return self._worker.failed

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the background worker has run what was asked of it (tests, benchmarks);
        False on timeout."""
        return self._worker.idle(timeout)

    def diagnose(self, route: str) -> bool:
        """Open a diagnosis window on ``route`` now, whatever its verdict (an operator's "explain
        this route"); False when one is already open or diagnosis is off."""
        return self._windows.start(route, None)

    def diagnosis_state(self, route: str) -> WindowState | None:
        """The state of ``route``'s diagnosis window (None: none open for it)."""
        return self._windows.state(route)

    def join_diagnosis(self, timeout: float | None = None) -> None:
        """Wait for the open diagnosis window's analysis to finish (tests, shutdown)."""
        self._windows.join(timeout)

    def diagnosis(self, route: str) -> RouteDiagnosis | None:
        """The latest finished diagnosis window of ``route`` (None: none yet)."""
        return self._windows.result(route)

    # -- clean-up -------------------------------------------------------------------------------
    def cleanup(self) -> CleanupStats:
        """Run gc and release the allocator's cached blocks now; returns the running totals."""
        return self._cleaner.run()

    # -- results --------------------------------------------------------------------------------
    @property
    def cleanups(self) -> CleanupStats:
        """Running totals of the clean-up policy."""
        return self._cleaner.stats

    @property
    def overhead(self) -> float:
        """What the web guard spends reading memory (CPU time), as a share of the time in
        requests: the Guard's reads and censuses and the route cuts. Not the fixed path of each
        request (a clock read, a lock, the bookkeeping), nor what a read costs the request
        after it (caches it evicted): see bench/web_overhead.py."""
        busy = self.guard.step_time_s
        return self.guard.overhead + self._cuts_spent / busy if busy > 0 else 0.0

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

    def attribution(self, *, fresh: bool = True) -> Attribution:
        """Per-route estimates over the attribution windows, recomputed when windows were added
        (milliseconds; tens with dozens of routes). ``fresh=False`` (the per-route checks on
        request threads) accepts a result up to ``_ATTRIBUTION_EVERY_S`` old instead."""
        now = self._clock()
        with self._lock:
            added = self._log.added
            cached = self._attribution
            if cached is not None and (cached[0] == added or (
                    not fresh and now - cached[1] < _ATTRIBUTION_EVERY_S)):
                return cached[2]
            windows = self._log.windows()
        found = attribute(windows)
        with self._lock:
            self._attribution = (added, now, found)
        return found

    def route_verdict(self, route: str, *, fresh: bool = True) -> Verdict:
        """The verdict of one route (KeyError for a route never seen): from its exactly measured
        requests and from the attribution windows, see :func:`~vramguard.adapters.routes.combine`;
        a leak verdict holds while the process's memory keeps growing and the route's data
        cannot tell (see :mod:`vramguard.analysis.keeper`)."""
        with self._lock:
            exact = self._routes.verdict(route)
            requests = self._routes.counts(route).requests
            upper = self._routes.upper(route)
            holding = self._routes.holding(route)
        verdict = self._combine(exact, self.attribution(fresh=fresh).route(route), requests,
                                upper)
        # Held while the process keeps growing (RouteBook.kept); the process's samples are
        # built only when the keeper reads them (a leak to note, or a leak it holds).
        samples = self.guard.samples if verdict.is_leak or holding else ()
        with self._lock:
            return self._routes.kept(route, verdict, samples, self.guard.signal_floor)

    def _combine(self, exact: Verdict, estimate: RouteEstimate | None, requests: int,
                 upper: float | None) -> Verdict:
        return combine(exact, estimate, requests, floor=self._counter.request_floor, upper=upper)

    def route_suspects(self, route: str, limit: int = 5) -> tuple[Suspect, ...]:
        """One route's suspects once a diagnosis window on it finished (opened by its leak
        verdict, or by :meth:`diagnose`): allocation site, root, cause and fix (empty before)."""
        diagnosis = self._windows.result(route)
        return diagnosis.suspects[:limit] if diagnosis is not None else ()

    @property
    def signal(self) -> str:
        """What the per-route numbers count, e.g. "native heap (glibc mallinfo2)"."""
        return self._counter.signal

    @property
    def cadence(self) -> tuple[float, int]:
        """(seconds one cut costs as the budget prices it, requests per cut the budget affords):
        why a route on this server gets an exact sample every so many requests (the status's
        ``signal``)."""
        with self._lock:
            return self._cut_cost(), self._cut_period()

    @property
    def signal_reason(self) -> str | None:
        """Why the counter is unavailable (per-route verdicts stay inconclusive), or None."""
        return self._counter.reason

    def health(self) -> Health:
        """Whether a liveness probe should pass (see :func:`decide_health`).

        Unhealthy when the overall verdict's leak, or one route's leak at that route's request
        rate, is predicted to reach the limit in time. Once unhealthy it stays so until a verdict
        says "no leak" again: a verdict that went inconclusive for a while (fewer samples, a
        noisy stretch) does not turn a pod that is still leaking healthy (no flapping).
        """
        options = self.options
        overall = self.verdict()
        samples = self.guard.samples
        now = self._clock()

        def judge(verdict: Verdict) -> Health:
            return decide_health(verdict, samples, now, within=options.unhealthy_within,
                                 limit=options.unhealthy_limit, above=options.unhealthy_above,
                                 above_for=options.unhealthy_for)

        health, source = judge(overall), None
        if health.healthy:
            for name, verdict in self._route_leaks(overall):
                found = judge(verdict)
                if not found.healthy:
                    health = Health(False, f"route {name}: {found.reason}",
                                    found.seconds_to_limit)
                    source = name
                    break
        with self._lock:
            held_source, held = self._unhealthy
        cleared = held is None or (overall if held_source is None else self.route_verdict(
            held_source)).kind is VerdictKind.NO_LEAK
        answer, held = hold(held, health, cleared=cleared)
        with self._lock:
            self._unhealthy = (source if not health.healthy else held_source, held)
        return answer

    def _route_leaks(self, overall: Verdict) -> list[tuple[str, Verdict]]:
        # Each leaking route as a verdict health can read: its bytes per request times its
        # request rate, from the process's current level (the overall series' last value, or
        # the last cut's reading: the Guard's own first read waits until it is paid for, and a
        # route's verdict can come before it).
        level = overall.end_bytes
        if level is None:
            level = next((s.allocated for s in reversed(self.guard.samples)
                          if s.allocated is not None), None)
        if level is None:
            with self._lock:
                level = self._last_reading
        capacity = overall.capacity_bytes
        leaks = []
        for counts in self.routes():
            verdict = self.route_verdict(counts.route)
            growth = verdict.growth
            with self._lock:
                rate = self._routes.rate(counts.route)
            if not verdict.is_leak or growth is None or rate is None or level is None:
                continue
            per_second = growth.bytes_per_request * rate
            to_full = None if capacity is None else (
                0.0 if level >= capacity else (capacity - level) / per_second)
            leaks.append((counts.route, replace(
                verdict, end_bytes=level, capacity_bytes=capacity,
                growth=replace(growth, bytes_per_second=per_second, seconds_to_full=to_full))))
        return leaks

    def _fail(self, where: str) -> None:
        # The service must not notice: log the first failure of each kind with its traceback and
        # stop guarding, rather than failing (or slowing) every later request the same way.
        self._broken = True
        if where not in self._logged:
            self._logged.add(where)
            _log.warning("vramguard: the web guard failed in %s; requests go on unguarded", where,
                         exc_info=True)

