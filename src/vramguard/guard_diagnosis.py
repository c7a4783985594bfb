"""The Guard's diagnosis window: after a leak verdict, track allocation sites over the next steps.

``Guard(diagnose="auto")`` opens a :class:`Window` the first time it gives a leak verdict. The next
``diagnose_steps`` steps each run under the allocation-site tracker (entered and left by the step
itself, in the step's thread). The analysis (census diff, reference paths, cause, fix) runs when
``Guard.report()`` is first called after the window, never on a step: in a helper thread that the
caller waits for (run beside the steps, it raced them for the GIL and hit its search limits under
load; on the caller's own thread, the caller's frames could not be named as roots).

The same :class:`Window` serves ``run_check_async``: a run inside someone else's event loop
cannot hand :func:`vramguard.diagnosis.diagnose` a synchronous function to call, so it drives the
window's steps itself.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vramguard.analysis.suspects import Suspect, TensorGrowth
from vramguard.readers import own
from vramguard.report import DiagnosisTimings

if TYPE_CHECKING:
    from vramguard.diagnosis.sites import SiteTracker
    from vramguard.readers.census import Census, TensorGroup

_log = logging.getLogger("vramguard")
# One tracker mode per thread at a time: async steps interleave on one thread, and dispatch
# modes form a stack, so a second step entering while the first is inside would pop the wrong
# mode on exit. The second step simply runs untracked (its allocations are the same code's).
_active = threading.local()


def suspects_of(grown: Sequence[tuple[TensorGroup, int, int]]) -> tuple[Suspect, ...]:
    """Pure: tensor groups that grew as (unexplained) suspects."""
    return tuple(Suspect(TensorGrowth(g.device, g.dtype, g.shape, g.requires_grad, g.grad_fn,
                                      count, size, g.in_graph)) for g, count, size in grown)


class Window:
    """A diagnosis window over ``steps`` steps that the caller runs (thread-safe).

    ``known``: the suspects already found (their whole-run growth figures win over the window's).
    ``background``: run the analysis in a thread when the last step ends; otherwise (the Guard,
    ``run_check_async``) :meth:`result` runs it, once, in a helper thread it waits for.
    """

    def __init__(self, steps: int, device: str, known: tuple[Suspect, ...] = (), *,
                 max_suspects: int = 5, background: bool = False) -> None:
        from vramguard.diagnosis.sites import SiteTracker
        from vramguard.readers.census import CensusTaker

        self.steps = steps
        self._device = device
        self._known = known
        self._max = max_suspects
        self._background = background
        # Sites only while a step of the window runs; CUDA's allocator history is not started
        # per step (its snapshot costs milliseconds), the dispatch mode sees every op anyway.
        self._tracker: SiteTracker = SiteTracker(cuda_history=False)
        self._taker = CensusTaker()
        self._lock = threading.Lock()
        self._entered = 0
        self._running = 0
        self._window_s = 0.0
        self._began = 0.0
        self._done = threading.Event()
        self._analysing = threading.Lock()
        self._suspects: tuple[Suspect, ...] = known
        self._timings: DiagnosisTimings | None = None
        gc.collect()
        self._before: Census = self._taker.take()
        # Graph nodes too: growth outside tensor storage (`loss_sum += loss`) is explained by
        # the graph that grew (vramguard.diagnosis.engine.graph_suspect).
        from vramguard.diagnosis.engine import graph_nodes

        self._nodes_before = graph_nodes()

    @property
    def open(self) -> bool:
        """True while steps may still enter the window (read without the lock: a hint)."""
        return self._entered < self.steps

    def enter(self) -> Any:
        """Called as a step starts: the tracker context to pass to :meth:`leave` (or None)."""
        with self._lock:
            if self._entered >= self.steps:
                return None
            self._entered += 1
            self._running += 1
            if self._entered == 1:
                self._began = time.perf_counter()
        # Each tracked step takes vramguard's own site records on the heap: guards' series
        # skip it (see readers.own). One span per step, so a window whose guard stops stepping
        # never leaves a span open; the analysis (at report()) is a span of its own.
        own.begin()
        if getattr(_active, "inside", False):
            return _Untracked
        context = self._tracker.active()
        try:
            context.__enter__()
        except Exception:  # the tracker must never break the step
            _log.warning("vramguard: the diagnosis window could not track a step", exc_info=True)
            return _Untracked
        _active.inside = True
        return context

    def leave(self, context: Any) -> None:
        """Called as a step ends, with what :meth:`enter` returned."""
        if context is None:
            return
        own.end()
        if context is not _Untracked:
            _active.inside = False
            try:
                context.__exit__(None, None, None)
            except Exception:
                _log.warning("vramguard: leaving the diagnosis window failed", exc_info=True)
        with self._lock:
            self._running -= 1
            last = self._entered >= self.steps and self._running == 0
            if last:
                self._window_s = time.perf_counter() - self._began
        if last and self._background:
            threading.Thread(target=self._analyse, name="vramguard-diagnosis", daemon=True).start()

    def _analyse(self) -> None:
        with self._analysing:
            if not self._done.is_set():
                self._analyse_once()

    def _analyse_once(self) -> None:
        began = time.perf_counter()
        own.begin()
        try:
            from vramguard.diagnosis.engine import explain
            from vramguard.readers.census import diff_groups

            gc.collect()
            after = self._taker.take()
            grown = [g for g in diff_groups(self._before, after)
                     if g[0].device == self._device and g[2] > 0][:8]
            if grown:
                self._suspects = explain(grown, self._tracker, known=self._known,
                                         max_suspects=self._max, taker=self._taker) or self._known
            if not any(s.cause not in (None, "unknown") for s in self._suspects):
                from vramguard.diagnosis.engine import graph_suspect

                graph = graph_suspect(self._nodes_before, self.steps, self._tracker)
                if graph is not None:
                    self._suspects = (graph, *self._suspects)[:self._max]
        except Exception:  # a failed analysis leaves the unexplained suspects, never a crash
            _log.warning("vramguard: the diagnosis analysis failed", exc_info=True)
        finally:
            self._timings = DiagnosisTimings(self.steps, self._window_s,
                                             time.perf_counter() - began)
            own.end()
            self._done.set()

    @property
    def closed(self) -> bool:
        """True once every step of the window has ended (the analysis may still be due)."""
        return self._entered >= self.steps and self._running == 0

    def result(self, timeout: float | None = None) -> tuple[tuple[Suspect, ...],
                                                            DiagnosisTimings | None]:
        """The explained suspects and timings; waits for the analysis (``timeout`` seconds at
        most), or returns the known suspects with ``None`` timings while the window is open."""
        if not self.closed:
            return self._known, None
        if not self._background and not self._done.is_set():
            # In a helper thread that this one waits for: the caller's frames (the training
            # loop's, the user's) are then another thread's frames, which the path search may
            # name as roots, and no step runs meanwhile to race it for the GIL.
            helper = threading.Thread(target=self._analyse, name="vramguard-diagnosis",
                                      daemon=True)
            helper.start()
            helper.join(timeout)
        self._done.wait(timeout)
        return self._suspects, self._timings


_Untracked = object()  # a step inside the window that runs untracked (see _active)


class GuardDiagnosis:
    """The Guard's side: opens one window after the first leak verdict, then keeps its result."""

    def __init__(self, steps: int, max_suspects: int = 5) -> None:
        if steps < 1:
            raise ValueError(f"diagnose_steps must be a positive number of steps, got {steps!r}")
        self.steps = steps
        self.window: Window | None = None
        self._max = max_suspects
        self._lock = threading.Lock()
        self._failed = False

    def saw_leak(self, guard: Any) -> None:
        """The guard gave a leak verdict: open the window (once). Off the step path."""
        if self.window is not None or self._failed:
            return
        with self._lock:
            if self.window is not None:
                return
            try:
                device = "cpu" if guard.device.is_cpu else str(guard.device)
                known = suspects_of(guard.growing_tensors(limit=self._max))
                self.window = Window(self.steps, device, known, max_suspects=self._max)
            except Exception:  # e.g. no torch: the report simply has no sites
                self._failed = True
                _log.warning("vramguard: could not open the diagnosis window", exc_info=True)

    def enter(self) -> Any:
        """Hot path while no window is open: one attribute test."""
        window = self.window
        if window is None or not window.open:
            return None
        return window.enter()

    def leave(self, context: Any) -> None:
        """Close a step's tracking (``context`` from :meth:`enter`, never None here)."""
        window = self.window
        if window is not None:
            window.leave(context)


def build_report(guard: Any, target: str, wait_s: float | None) -> Any:
    """The Guard's :class:`~vramguard.report.Report`: its verdict, its samples and, after a leak,
    the suspects (explained once the diagnosis window has run). Costs a census on a leak."""
    from vramguard.report import Report

    verdict = guard.verdict()  # a leak opens the window (Guard.verdict calls saw_leak)
    suspects: tuple[Suspect, ...] = ()
    timings: DiagnosisTimings | None = None
    diagnosis: GuardDiagnosis | None = guard._diagnosis
    if verdict.is_leak:
        window = None if diagnosis is None else diagnosis.window
        if window is not None:
            suspects, timings = window.result(wait_s)
        if not suspects:
            suspects = suspects_of(guard.growing_tensors())
    return Report(target=target, device=str(guard.device), requests=guard.requests,
                  warmup=verdict.warmup, verdict=verdict, suspects=suspects,
                  samples=guard.samples, unit=guard.unit,
                  diagnosis_seconds=None if timings is None else timings.total_s,
                  diagnosis=timings)


def explained(guard: Any) -> bool:
    """True when the Guard's leak explanation is as complete as it will get: its window ran (or
    none will: ``diagnose="never"``, or the window could not open)."""
    diagnosis: GuardDiagnosis | None = guard._diagnosis
    if diagnosis is None or diagnosis._failed:
        return True
    window = diagnosis.window
    return window is not None and window.closed
