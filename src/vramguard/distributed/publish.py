"""Publishing a rank's summary from a background thread: nothing on the step path, no collectives.

Monitoring through the training collectives is how jobs hang (an ``all_gather`` that only some
ranks reach, Lightning#16541; divergent logging keys, Lightning#19106). The sharer only ``set``s
its own key in the job's store, from its own thread and its own store connection, so a step never
waits on it and no rank ever waits on another. A store that fails is logged once and retried at
each interval; the readers then see this rank as stale, which is the truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vramguard.distributed.store import WORLD_KEY, default_store, private_connection, rank_key
from vramguard.distributed.summary import RankSummary, summarize
from vramguard.errors import UsageError
from vramguard.readers.heap import prime_thread_cache
from vramguard.readers.rank import read_identity
from vramguard.units import parse_duration

if TYPE_CHECKING:
    from vramguard.guard import Guard

_log = logging.getLogger("vramguard")
SUSPECT_EVERY_S = 600.0
"""How often a leaking rank's top suspect is looked up again: it takes a grouped census (tens to
hundreds of ms on a large heap), 30x the cost of the rest of a publish; in between, the last
suspect line is republished."""


def seconds(value: str | float, *, name: str) -> float:
    """``"30s"``/``"5m"``/``2.5`` -> seconds (> 0); :class:`UsageError` otherwise."""
    number = parse_duration(value) if isinstance(value, str) else float(value)
    if not number > 0:
        raise UsageError(f"expected {name} to be a positive duration like '30s', got {value!r}")
    return number


class Sharer:
    """Publishes ``guard``'s :class:`~vramguard.distributed.summary.RankSummary` to ``store``
    every ``every_s`` seconds once started. Made by :func:`share`.

    ``clock`` (wall-clock Unix seconds, the time stamped on each summary) is injectable;
    :meth:`publish` publishes once, synchronously, for tests and for a last word before exit.
    ``published``/``failures`` count outcomes; ``error`` is the last failure's text.
    """

    def __init__(self, guard: Guard, store: Any, *, every_s: float,
                 clock: Callable[[], float] = time.time, suspects: bool = True,
                 timeout_s: float = 10.0) -> None:
        self._guard = guard
        self._store = store
        self._own: Any = None  # our connection, made in the thread (connecting can block)
        self.every_s = every_s
        self._clock = clock
        self._suspects = suspects
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._soon = threading.Event()  # publish_soon()'s wake-up (and stop()'s)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.failures = 0
        self.error: str | None = None
        self.last: RankSummary | None = None
        self._suspect_at: float | None = None  # when the top suspect was last looked up

    def publish(self) -> bool:
        """Publish one summary now; True when the store took it. Never raises."""
        try:
            if self._own is None:
                self._own = private_connection(self._store, self._timeout_s)
            now = self._clock()
            due = self._suspects and (self._suspect_at is None
                                      or now - self._suspect_at >= SUSPECT_EVERY_S)
            summary = summarize(self._guard, read_identity(), every_s=self.every_s,
                                clock=lambda: now, suspects=due)
            if due and summary.suspect is not None:
                self._suspect_at = now
            elif not due and self.last is not None and summary.verdict == self.last.verdict:
                summary = replace(summary, suspect=self.last.suspect)
            if summary.world_size is not None:
                self._own.set(WORLD_KEY, str(summary.world_size))
            self._own.set(rank_key(summary.rank), summary.to_json())
        except Exception as exc:  # the job must never notice: degrade, say so once
            if self._own is not self._store:
                self._own = None  # our connection may be dead: make a new one next time
            with self._changed:
                self.failures += 1
                self.error = f"{type(exc).__name__}: {exc}"
                first = self.failures == 1
                self._changed.notify_all()
            if first:
                _log.warning("vramguard: publishing this rank's summary failed (%s); other ranks "
                             "will see it as stale. Retrying every %gs, logged only once.",
                             self.error, self.every_s)
            return False
        with self._changed:
            self.published += 1
            self.last = summary
            self._changed.notify_all()
        return True

    def wait_for(self, attempts: int, timeout: float | None = None) -> bool:
        """Block until ``attempts`` publishes were tried (succeeded or failed) since creation;
        False if ``timeout`` passed first. For tests and job scripts, never for steps."""
        with self._changed:
            return self._changed.wait_for(lambda: self.published + self.failures >= attempts,
                                          timeout)

    def start(self) -> Sharer:
        """Start the background thread (publishes at once, then every ``every_s``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vramguard-share",
                                            daemon=True)
            self._thread.start()
        return self

    def publish_soon(self) -> int:
        """Wake the thread to publish now rather than at the next interval; never blocks (the
        training callbacks call it at each verdict check, so summaries follow the checks, not
        the clock). Returns the attempts made so far: ``wait_for(returned + 1)`` waits for the
        next one (which reads the guard after this call, unless one was already under way)."""
        with self._changed:
            attempts = self.published + self.failures
        self._soon.set()
        return attempts

    def _run(self) -> None:
        # This thread judges (a publish recomputes the verdict when a step added a sample since
        # the check) and talks to the store: its frees of the analysis's growing lists and of
        # the store's buffers would fill its tcache under the CPU heap counter: a clean DDP
        # rank's heap grew by hundreds of B/step over its first few hundred steps
        # (bench/ddp_own_drift.py; see readers.heap.prime_thread_cache).
        prime_thread_cache(long_lived=True)
        while not self._stop.is_set():
            self.publish()
            self._soon.wait(self.every_s)
            # A wake-up between the wait and this clear is not lost: the publish just below
            # reads the guard after it.
            self._soon.clear()

    def stop(self, *, final: bool = False, timeout: float | None = None) -> None:
        """Stop publishing (``final``: publish once more first, in the caller's thread)."""
        self._stop.set()
        self._soon.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if final:
            self.publish()

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sharer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Sharer(every_s={self.every_s:g}, published={self.published}, "
                f"failures={self.failures}, running={self.running})")


def share(guard: Guard, every: str | float = "30s", store: Any = None, *,
          clock: Callable[[], float] = time.time, suspects: bool = True) -> Sharer:
    """Publish ``guard``'s summary every ``every`` (``"30s"``, ``"5m"`` or seconds) from a
    background thread to ``store`` (default: the default process group's store), and return the
    started :class:`Sharer`. Read every rank's with :func:`~vramguard.distributed.table` or
    ``vramguard ranks --store HOST:PORT``.

    Costs the steps nothing: the thread reads the guard's cached verdict (recomputed only when
    new samples arrived) and, on a leak, takes a grouped census for the top suspect at most
    every 10 minutes (``suspects=False`` never). :class:`UsageError` outside a distributed job.
    """
    every_s = seconds(every, name="every")
    if not read_identity().known:
        raise UsageError("expected a process of a distributed job (RANK, SLURM_PROCID, "
                         "OMPI_COMM_WORLD_RANK or torch.distributed), got none",
                         hint="run under torchrun, srun or mpirun, or init_process_group first")
    return Sharer(guard, default_store() if store is None else store, every_s=every_s,
                  clock=clock, suspects=suspects).start()
