"""The web guard's background worker: work that a request asked for, run off the request path.

What runs here: a route's leak check (``decide`` on its measured series plus the attribution's
NNLS fit, 2-5 ms; ``bench/route_check_cost.py``) that decides whether to open a diagnosis window,
and the Guard's deferred censuses (a C-level pass over the whole heap, tens to hundreds of ms).
On the request thread they made one request in a thousand (the one that ended a second after the
last check) or one in tens of thousands (the census) that much slower: its p99.9 and max.

The request only *asks*: :meth:`Worker.ask` adds a key to a bounded set of pending jobs and wakes
the thread; it never waits for the thread and never runs a job itself. One daemon thread, started
at the first ask, runs one job at a time. :meth:`Worker.close` stops it (the ASGI lifespan's
shutdown, or the app's owner). A job that raises stops the worker: it logs once, later asks are
ignored, ``failed`` says why, and the requests go on as before.

What a thread cannot do under CPython's GIL: a job's Python code still competes with the request
thread for the interpreter. It runs while the request thread waits (on its socket, or inside torch
ops, which release the GIL), instead of being added to one request's time; a single C call that
holds the GIL (the census's ``gc.get_referrers``) still pauses every thread for its duration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

from vramguard.readers.heap import prime_thread_cache

_log = logging.getLogger("vramguard")
MAX_PENDING = 64  # jobs waiting at most; a request finding it full drops its ask (asked again later)
_JOIN_S = 5.0     # close() waits at most this long for a job in progress


class Worker:
    """Runs ``run(key)`` for each key asked for, one at a time, in one daemon thread.

    Keys asked for again while still pending run once. ``name`` names the thread.
    """

    def __init__(self, run: Callable[[Hashable], None], *, name: str = "vramguard-worker",
                 max_pending: int = MAX_PENDING) -> None:
        self._run = run
        self._name = name
        self._max_pending = max_pending
        self._changed = threading.Condition(threading.Lock())
        self._pending: dict[Hashable, None] = {}  # insertion-ordered set
        self._busy = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self.failed: str | None = None  # why the worker stopped on its own (None: it did not)
        self.done = 0                   # jobs finished

    def ask(self, key: Hashable) -> bool:
        """Queue ``key`` (hot path: a lock held for a dict insert and a notify; never waits for
        a job). False when the worker is closed, failed or full."""
        if self._closed or self.failed is not None:
            return False
        with self._changed:
            if self._closed or len(self._pending) >= self._max_pending:
                return False
            self._pending[key] = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._changed.notify_all()
        return True

    @property
    def alive(self) -> bool:
        """True while the worker's thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self, timeout: float = _JOIN_S) -> None:
        """Stop the thread after the job in progress (pending ones are dropped); idempotent."""
        with self._changed:
            self._closed = True
            self._pending.clear()
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def reopen(self) -> None:
        """Accept jobs again after :meth:`close` (an app started again, e.g. a second lifespan in
        one process); the thread starts at the next job. A failed worker stays stopped."""
        with self._changed:
            if self._closed and not self.alive:
                self._closed = False
                self._thread = None

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is pending or running (tests, shutdown); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not (self._pending or self._busy), timeout)

    def _loop(self) -> None:
        # This thread's analyses free lists sized by the sample counts: under the heap counter
        # their chunks must not fill this thread's glibc tcache, which the counter counts as in
        # use (see readers.heap.prime_thread_cache). No torch work here drains it again.
        prime_thread_cache(long_lived=True)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                key = next(iter(self._pending))
                del self._pending[key]
                self._busy = True
            try:
                self._run(key)
            except Exception as error:  # the service must not notice: degrade, say so once
                self.failed = f"{type(error).__name__}: {error}"
                _log.warning("vramguard: the %s thread failed (%s); its checks stop, requests go "
                             "on", self._name, self.failed, exc_info=True)
                return
            finally:
                with self._changed:
                    self._busy = False
                    if self.failed is not None:
                        self._pending.clear()
                    self._changed.notify_all()
            self.done += 1
