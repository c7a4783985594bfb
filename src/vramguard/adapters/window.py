"""Diagnosis windows for the web adapters: once a route's verdict is a leak, its next requests run
under the allocation-site tracker, then a background thread explains what grew (the route's root
variable, the cause and the fix, shown by ``/vramguard/status``).

Bounded work: one window at a time in the process, a window per route at most every
``diagnose_every`` seconds, ``diagnose_requests`` requests per window (or ``MAX_WINDOW_S``,
whichever comes first), and the analysis runs in one daemon thread, off the request path.

Where the tracker sees allocations (it is a ``TorchDispatchMode``, active only in the thread that
enters it): the adapters enter it in the thread that runs the handler when they can (WSGI and
Flask handlers, and ``async def`` ASGI endpoints, which run on the event loop thread around the
middleware's call). FastAPI/Starlette *sync* endpoints run in a threadpool the middleware cannot
reach: for them the window falls back to the storages that appeared since it opened (a set of
storage addresses taken when it opens, no references), which still gives the reference path, the
root variable and the cause, but no ``allocated_at`` (null, never guessed). On CUDA the
allocator's history (all threads) fills ``allocated_at`` for those too, while a tracked request
runs. Only one request is tracked at a time: on an event loop, two dispatch modes entered and left
by interleaved coroutines would be popped in the wrong order.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from vramguard.analysis.suspects import Suspect
from vramguard.readers import own
from vramguard.readers.census import TensorGroup

_log = logging.getLogger("vramguard")
MAX_WINDOW_S = 120.0  # a route that stops getting requests must not keep its window open forever
_DRAIN_S = 10.0       # how long the analysis waits for a tracked request still in flight
_NULL: AbstractContextManager[None] = nullcontext()
Grown = Sequence[tuple[TensorGroup, int, int]]
Explainer = Callable[..., tuple[Suspect, ...]]


class WindowState(enum.StrEnum):
    """Where a window is in its life."""

    STARTING = "starting"    # taking the set of storages that exist before it
    OPEN = "open"            # the route's requests are tracked and counted
    EXPLAINING = "explaining"


@dataclass(frozen=True, slots=True)
class RouteDiagnosis:
    """What one window found for a route, and what it cost."""

    route: str
    suspects: tuple[Suspect, ...]
    requests: int       # requests of the route that ended while the window was open
    tracked: int        # of which ran with the site tracker active in their thread
    analysis_s: float   # the background analysis, off the request path
    finished_at: float  # on the web guard's clock

    def __str__(self) -> str:
        return (f"{self.route}: {len(self.suspects)} suspect(s) from a {self.requests}-request "
                f"window ({self.tracked} tracked), analysed in {self.analysis_s:.2f} s")


@dataclass(slots=True)
class _Window:
    route: str
    grown: list[tuple[TensorGroup, int, int]]
    tracker: Any
    opened_at: float
    state: WindowState = WindowState.STARTING
    requests: int = 0
    tracked: int = 0
    active: int = 0  # tracked requests in flight (0 or 1)
    done: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)


def storage_key(tensor: Any) -> tuple[int, int] | None:
    """(device index, storage address) of a tensor, or None when it has no plain storage."""
    try:
        pointer = tensor.untyped_storage().data_ptr()
        return None if pointer == 0 else (tensor.get_device(), pointer)
    except (RuntimeError, NotImplementedError):
        return None


def _taker() -> Any:
    # One census taker for all of a window's heap scans: a taker's first scan asks gc for the
    # referrers of every Tensor class (14 here), later ones only of the classes that have
    # instances (see CensusTaker._classes_to_scan). Each scan is one C call that holds the GIL,
    # so a fresh taker per scan stalled the server's requests ~7x longer than it needed to.
    from vramguard.readers.census import CensusTaker

    return CensusTaker()


def _live_storage_keys(taker: Any) -> frozenset[tuple[int, int]]:
    tensors = taker.live_tensors()
    try:
        return frozenset(k for k in map(storage_key, tensors) if k is not None)
    finally:
        tensors.clear()  # addresses only: the window must not keep the user's tensors alive


def _census(taker: Any) -> Any:
    return taker.take(groups=True)


def _grown_since(before: Any, taker: Any) -> list[tuple[TensorGroup, int, int]]:
    from vramguard.readers.census import diff_groups

    return [g for g in diff_groups(before, _census(taker)) if g[2] > 0]


def _default_explainer(grown: Grown, tracker: Any, *, born: Callable[[Any], bool] | None,
                       taker: Any = None) -> tuple[Suspect, ...]:
    from vramguard.diagnosis.engine import explain

    return explain(grown, tracker, born=born, taker=taker)


def _default_tracker() -> Any:
    from vramguard.diagnosis.sites import SiteTracker

    return SiteTracker()


class _Tracking:
    """Enters the window's tracker in this thread; never raises into the request."""

    __slots__ = ("_context", "_owner", "_window")

    def __init__(self, owner: Windows, window: _Window) -> None:
        self._owner, self._window = owner, window
        self._context: AbstractContextManager[Any] | None = None

    def __enter__(self) -> None:
        try:
            context = self._window.tracker.active()
            context.__enter__()
            self._context = context
            self._window.tracked += 1
        except Exception:
            self._owner.fail("tracking a request")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if self._context is not None:
                # Not the request's exception: the tracker just stops, the error goes on.
                self._context.__exit__(None, None, None)
        except Exception:
            self._owner.fail("stopping the tracker")
        finally:
            self._context = None
            self._owner.release(self._window)


class Windows:
    """The diagnosis windows of one web guard; see the module docstring.

    ``requests`` per window (0: never open one), a route's window at most every ``every`` seconds
    of ``clock``. ``explainer(grown, tracker, born=...)`` and ``tracker_factory()`` are the
    diagnosis engine's by default (injected in tests).
    """

    def __init__(self, requests: int, every: float, clock: Callable[[], float], *,
                 explainer: Explainer | None = None,
                 tracker_factory: Callable[[], Any] | None = None,
                 max_window_s: float = MAX_WINDOW_S) -> None:
        self._requests = requests
        self._every = every
        self._clock = clock
        self._explainer = explainer or _default_explainer
        self._tracker_factory = tracker_factory or _default_tracker
        self._max_window_s = max_window_s
        self._lock = threading.Lock()
        self._window: _Window | None = None
        self._next: dict[str, float] = {}
        self._results: dict[str, RouteDiagnosis] = {}
        self._thread: threading.Thread | None = None
        self._disabled = requests <= 0
        self._logged: set[str] = set()
        # Odd while a window lives (from its first scan until its records are dropped): the
        # scans hold references to every live tensor, and the tracker's records sit on the heap,
        # so a request that overlapped a window is not attributed to its route (``scan_epoch``).
        self._epoch = 0

    # -- hot path ----------------------------------------------------------------------------------
    @property
    def scan_epoch(self) -> int:
        """Odd while a window lives; +1 at its start and end (hot path: one read). A request
        whose epoch at its start differs from its end, or is odd, overlapped a window."""
        return self._epoch

    @property
    def open(self) -> bool:
        """True while a window is open or starting (hot path: one attribute read)."""
        return self._window is not None

    def track(self, route: str | None) -> AbstractContextManager[None]:
        """A context that activates the tracker when ``route`` is the one under diagnosis and no
        other request is tracked; a no-op context otherwise. Enter it in the handler's thread."""
        window = self._window
        if window is None or route != window.route:
            return _NULL
        with self._lock:
            if self._window is not window or window.state is not WindowState.OPEN or window.active:
                return _NULL
            window.active += 1
            window.idle.clear()
        return _Tracking(self, window)

    def ended(self, route: str) -> None:
        """A request of ``route`` ended (call after its tracking context, if any, exited)."""
        window = self._window
        if window is None or route != window.route:
            return
        with self._lock:
            if window.state is WindowState.OPEN:
                window.requests += 1
                if window.requests >= self._requests:
                    window.done.set()

    def release(self, window: _Window) -> None:
        """A tracked request left its tracking context (called by ``_Tracking``)."""
        with self._lock:
            window.active -= 1
            if not window.active:
                window.idle.set()

    # -- opening -----------------------------------------------------------------------------------
    def due(self, route: str) -> bool:
        """True when a window for ``route`` may open now (none open, none too recent)."""
        return (not self._disabled and self._window is None
                and self._clock() >= self._next.get(route, float("-inf")))

    def start(self, route: str, grown: Grown | None = None) -> bool:
        """Open a window for ``route`` explaining ``grown``; False if one is open or it failed.

        Without ``grown`` (the web guard's cheap counter names no tensors), the window measures
        it: a census when it opens and one when it closes, in its own thread.
        """
        if self._disabled:
            return False
        with self._lock:
            if self._window is not None:
                return False
            try:
                window = _Window(route, list(grown or ()), self._tracker_factory(), self._clock())
            except Exception:
                self.fail("creating the site tracker")
                return False
            window.idle.set()
            self._window = window
            self._next[route] = self._clock() + self._every
            # Odd from here, before the thread exists: on a loaded machine it may first run
            # milliseconds later, and what its start allocated would land in requests' windows.
            self._epoch += 1
        thread = threading.Thread(target=self._run, args=(window,), daemon=True,
                                  name=f"vramguard-diagnosis {route}")
        self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the window never was
            with self._lock:
                self._window = None
                self._epoch += 1
            self.fail("starting the window's thread")
            return False
        return True

    # -- the window's own thread -------------------------------------------------------------------
    def _run(self, window: _Window) -> None:
        # The epoch is odd for the window's whole life, not only while it scans: the site
        # tracker's records, the storage keys and the first census live on the heap until the
        # end, so no request that overlapped any of it is attributed to its route.
        born_keys: frozenset[tuple[int, int]] = frozenset()
        before: Any = None
        own.begin()  # the overall Guard's heap series skips the window (see readers.own)
        try:
            # Debug lines mark the window's phases (bench/web_diagnosis_latency.py times other
            # requests against them; an operator can see when the scans ran).
            _log.debug("vramguard: diagnosis window on %s: scanning", window.route)
            began = time.perf_counter()
            warm = getattr(window.tracker, "warm", None)
            if warm is not None:  # the tracker's one-off first activation, here, not in a request
                warm()
            taker = _taker()
            born_keys = _live_storage_keys(taker)
            if not window.grown:
                before = _census(taker)
            with self._lock:
                window.state = WindowState.OPEN
            _log.debug("vramguard: diagnosis window on %s: open", window.route)
            window.done.wait(timeout=max(0.0, self._max_window_s - (time.perf_counter() - began)))
            with self._lock:
                window.state = WindowState.EXPLAINING  # no new tracked requests from here on
            window.idle.wait(timeout=_DRAIN_S)
            _log.debug("vramguard: diagnosis window on %s: explaining", window.route)
            started = time.perf_counter()

            def born(tensor: Any) -> bool:
                key = storage_key(tensor)
                return key is not None and key not in born_keys

            # Tracked requests give exemplars with their allocation line: use only those when
            # there are any; the storages born in the window are the fallback (sync endpoints).
            if before is not None:
                window.grown = _grown_since(before, taker)
            extra = {"taker": taker} if self._explainer is _default_explainer else {}
            suspects = self._explainer(window.grown, window.tracker,
                                       born=None if window.tracked else born, **extra)
            result = RouteDiagnosis(window.route, tuple(suspects), window.requests, window.tracked,
                                    time.perf_counter() - started, self._clock())
            with self._lock:
                self._results[window.route] = result
            _log.debug("vramguard: diagnosis window on %s: done in %.3f s", window.route,
                       result.analysis_s)
        except Exception:
            self.fail("explaining the window")
        finally:
            own.end()
            with self._lock:
                window.tracker = None  # its records are addresses; drop them with the window
                self._window = None
                self._next[window.route] = self._clock() + self._every
            born_keys = frozenset()  # the addresses go with the window
            before = None
            with self._lock:
                self._epoch += 1

    # -- results -----------------------------------------------------------------------------------
    def result(self, route: str) -> RouteDiagnosis | None:
        """The latest finished diagnosis of ``route``, or None."""
        return self._results.get(route)

    def state(self, route: str) -> WindowState | None:
        """The state of ``route``'s window, or None when none is open for it."""
        window = self._window
        return window.state if window is not None and window.route == route else None

    def join(self, timeout: float | None = None) -> None:
        """Wait for the current window's thread (for tests and shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def fail(self, where: str) -> None:
        """Log the first failure of each kind; diagnosis stops, requests go on unaffected."""
        self._disabled = True
        if where not in self._logged:
            self._logged.add(where)
            _log.warning("vramguard: the diagnosis window failed while %s; diagnosis is off, "
                         "requests go on", where, exc_info=True)
