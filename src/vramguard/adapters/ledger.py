"""Cutting a server's time into attribution windows. Pure bookkeeping on plain values.

The web guard reads its cheap counter at some request starts and ends (a *cut*); between two
cuts lies a window. Each request, when it ends, is spread over the windows it ran in, in
proportion to the time it spent in each (see :mod:`vramguard.adapters.attribution` for why).
A window is *finished* once it is cut and no request that ran in it is still in flight; it is
*exact* when exactly one request ran in it, from the cut that opened it to before the cut that
closed it: its delta is then that request's own retained bytes (including what it freed after
its response, up to the next request: the cut is at the next start, not at its own end).

Not thread-safe: the caller (``WebGuard``) holds its lock. Nothing here reads memory or clocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished window: its delta (None: unusable, e.g. a diagnosis scan overlapped it), each
    route's share of requests, and the route when the window is exact."""

    delta: int | None
    counts: dict[str, float]
    exact: str | None
    end: float
    quiet: bool = True  # no background work of vramguard's ran in it (see Ledger.cut)


@dataclass(slots=True)
class _Open:
    start: float
    value: int | None
    epoch: int
    busy: int = 0
    kept: int = 0
    end: float | None = None
    delta: int | None = None
    counts: dict[str, float] = field(default_factory=dict)
    contributors: int = 0
    exact: str | None = None
    tainted: bool = False
    quiet: bool = True


class Ledger:
    """The windows not finished yet, and the requests in flight per window they began in."""

    def __init__(self, now: float = 0.0) -> None:
        self._windows: deque[_Open] = deque([_Open(now, None, 0)])
        self._first = 0                   # id of self._windows[0]
        self._in_flight: dict[int, int] = {}
        self.begun_since_cut = 0
        self.ended_since_cut = 0

    @property
    def current(self) -> int:
        """Id of the open window."""
        return self._first + len(self._windows) - 1

    def cut(self, now: float, value: int | None, epoch: int, busy: int = 0,
            kept: int = 0) -> list[Finished]:
        """Close the open window at ``now`` with the counter's ``value`` and open the next one.

        ``epoch``: the diagnosis scan epoch now (see ``Windows.scan_epoch``); a window whose
        epoch changed or is odd overlapped a scan and gets no delta. ``busy``: odd while one of
        vramguard's background jobs runs, ``kept``: how many jobs that keep memory (a census's
        baseline) ran so far. A window cut while a job ran (its temporaries alive at a cut) or
        in which a keeping job ran keeps its delta but is not ``quiet``; a window that merely
        held a whole job, which freed what it used, is.
        """
        window = self._windows[-1]
        window.end = now
        if (value is not None and window.value is not None and epoch == window.epoch
                and epoch % 2 == 0 and not window.tainted):
            window.delta = value - window.value
        window.quiet = busy % 2 == 0 and window.busy % 2 == 0 and kept == window.kept
        self._windows.append(_Open(now, value, epoch, busy, kept))
        self.begun_since_cut = self.ended_since_cut = 0
        return self._finish()

    def taint(self, since: int) -> None:
        """The windows from id ``since`` to the open one get no delta (a request on a thread's
        first use ran in them: see ``WebGuard.begin``)."""
        for index in range(max(0, since - self._first), len(self._windows)):
            self._windows[index].tainted = True

    def begin(self) -> int:
        """A request begins now; returns the id of the window it begins in."""
        current = self.current
        self._in_flight[current] = self._in_flight.get(current, 0) + 1
        self.begun_since_cut += 1
        return current

    def end(self, began_in: int, started: float, now: float, route: str) -> list[Finished]:
        """A request of ``route`` that began at ``started`` in window ``began_in`` ends ``now``."""
        left = self._in_flight[began_in] - 1
        if left:
            self._in_flight[began_in] = left
        else:
            del self._in_flight[began_in]
        self.ended_since_cut += 1
        windows = self._windows
        if began_in == self._first + len(windows) - 1:  # hot path: it ran in the open window
            window = windows[-1]
            window.counts[route] = window.counts.get(route, 0.0) + 1.0
            window.contributors += 1
            if started == window.start:
                window.exact = route
            return self._finish() if len(windows) > 1 else []
        first = max(began_in, self._first)
        spans = []
        for index in range(first - self._first, len(self._windows)):
            window = self._windows[index]
            stop = now if window.end is None else min(window.end, now)
            spans.append((window, max(0.0, stop - max(started, window.start))))
        total = sum(span for _, span in spans)
        for window, span in spans:
            share = span / total if total > 0 else float(window is spans[0][0])
            if share > 0:
                window.counts[route] = window.counts.get(route, 0.0) + share
                window.contributors += 1
        only = spans[0][0]
        if len(spans) == 1 and began_in >= self._first and started == only.start:
            only.exact = route
        return self._finish()

    def _finish(self) -> list[Finished]:
        oldest = min(self._in_flight, default=self.current + 1)
        done = []
        while len(self._windows) > 1 and self._first < oldest:
            window = self._windows.popleft()
            self._first += 1
            exact = window.exact if window.contributors == 1 else None
            end = window.start if window.end is None else window.end  # always cut here
            done.append(Finished(window.delta, window.counts, exact, end, window.quiet))
        return done
