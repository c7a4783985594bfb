"""The training callbacks under a distributed run: every rank shares, rank 0 logs the table.

:class:`~vramguard._training.TrainingWatch` (behind the Lightning and HF Trainer callbacks) makes
one :class:`RankSharing` when torch.distributed is initialised with more than one process
(Lightning ``strategy="ddp"``, an HF Trainer under torchrun). Each rank's training Guard then
publishes its summary with :func:`~vramguard.distributed.share`, woken at every verdict check so
the summaries follow the checks (and at least every ``every_s``, from which readers judge a rank
stale). On rank 0 each check also asks for the :func:`~vramguard.distributed.table`, logs it
through the ``vramguard`` logger, and keeps it for the callback's metrics.

Sharing uses no collective and never blocks a step: publishing is the sharer's thread, and the
table is read by a thread of its own. (The one collective here is :func:`stop_together`, for
``on_leak="stop"`` only; its docstring says why it is safe.) A read is two store calls per rank
over the reader's own kept connection, milliseconds on a healthy store, but a store that
stalls (its host is swapping, a network partition) would hold a step for the whole timeout; off
the step path it costs the step nothing, and a check that finds the previous read still running
skips its own. Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from vramguard.readers.heap import prime_thread_cache

if TYPE_CHECKING:
    from vramguard.distributed.publish import Sharer
    from vramguard.distributed.ranktable import RankTable
    from vramguard.guard import Guard

_log = logging.getLogger("vramguard")
SHARE_EVERY = "30s"
"""The callbacks' publishing interval between checks: publishing at 30 s cost 0.01-0.07% of a
3-rank job (issue 11's bench); readers call a rank stale after 3 intervals without a word."""
TABLE_TIMEOUT_S = 2.0
"""Per store call, and as a deadline over all ranks, for rank 0's table read at a check."""


def world() -> tuple[int, int] | None:
    """(rank, world size) when torch.distributed is initialised with more than one process, else
    None. Never imports torch (the training frameworks have, when it matters) and calls no
    collective (``get_rank``/``get_world_size`` are local)."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None)
    try:
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            return None
        rank, size = int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # a half-initialised or unusual build: not a run we can share in
        return None
    return (rank, size) if size > 1 else None


def stop_together(stop: bool, spacing: int, device: Any = None, *,
                  urgent: bool = False) -> tuple[bool, int]:
    """Whether any rank wants to stop, and the steps to the next check, on every rank alike:
    ``(stop, spacing)`` themselves outside a distributed run, else from one MAX all-reduce (a
    tensor on ``device``: the backend's, e.g. ``cuda:N`` for NCCL; None: CPU). The spacing
    agreed is the largest rank's proposal (each rank's checks cost differently:
    :class:`~vramguard._training.CheckCadence`), or the smallest when a rank is ``urgent`` (its
    leak action waits for a check). For ``on_leak="stop"`` only: one rank leaving the
    training loop alone kills the others at their next gradient all-reduce (gloo: "Connection
    closed by peer"; NCCL: a hang until its timeout). Every rank must call it at the same step,
    which the agreed spacing keeps so; that is what makes this collective safe where
    monitoring collectives are not (an all_gather only some ranks reach, Lightning#16541)."""
    if world() is None:
        return stop, spacing
    import torch
    import torch.distributed as dist

    vote = torch.tensor([int(stop), int(urgent), spacing, -spacing], dtype=torch.int64,
                        device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    stop_any, urgent_any, largest, least_negated = (int(value) for value in vote.tolist())
    return bool(stop_any), -least_negated if urgent_any else largest


class RankSharing:
    """One rank's sharing for a training callback (see the module docstring).

    ``guard``: the training Guard. ``rank``: this process's rank (rank 0 reads the table).
    ``every``: the publishing interval between checks. ``store``: None for the default process
    group's. ``table_timeout_s``: bounds each table read. Made by :meth:`start`; ``latest`` is
    the last table read (rank 0; None before the first), ``reads``/``failures`` count reads.
    """

    def __init__(self, guard: Guard, rank: int, *, every: str | float = SHARE_EVERY,
                 store: Any = None, table_timeout_s: float = TABLE_TIMEOUT_S) -> None:
        from vramguard.distributed.publish import share

        self.rank = rank
        self._store = store
        self._timeout_s = table_timeout_s
        self.sharer: Sharer = share(guard, every=every, store=store)
        self.latest: RankTable | None = None
        self.reads = 0
        self.failures = 0
        self.skipped = 0  # checks whose read was skipped: the previous one was still running
        self._flagged: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self._due: int | None = None  # the sharer's attempt count at the check that asked
        self._wake = threading.Condition(self._lock)
        self._closed = False
        # The table reader's own store connection, made at its first read and kept. A new one
        # per read (what ``table()`` makes) took 0.3-2 ms to connect, and about one connect in
        # 25 to a TCPStore served from this process stalled 5 s before it went through, past
        # the read's timeout (measured: 40 connects in a row; 500 ``table()`` reads took 97 s
        # on a busy machine). On a kept one a check and a get take ~0.02 ms. Dropped after a
        # failed read, remade at the next.
        self._connection: Any = None
        self._reader: threading.Thread | None = None
        if rank == 0:
            self._reader = threading.Thread(target=self._read_loop, name="vramguard-table",
                                            daemon=True)
            self._reader.start()

    @classmethod
    def start(cls, guard: Guard, *, every: str | float = SHARE_EVERY) -> RankSharing | None:
        """Share ``guard`` when this is a distributed run (see :func:`world`); None otherwise,
        or when sharing could not start (logged: the run goes on unwatched across ranks)."""
        where = world()
        if where is None:
            return None
        try:
            return cls(guard, where[0], every=every)
        except Exception:  # the run must never notice
            _log.warning("vramguard: could not share this rank's summary; the rank table will "
                         "not show this rank", exc_info=True)
            return None

    def check(self) -> None:
        """A verdict check (on the step path: returns at once). Publish now; on rank 0, read
        the table once that publish is done, unless the previous read is still running."""
        attempts = self.sharer.publish_soon()
        if self._reader is None:
            return
        with self._wake:
            if self._due is not None:
                self.skipped += 1
                return
            self._due = attempts
            self._wake.notify()

    def _read_loop(self) -> None:
        prime_thread_cache(long_lived=True)  # as the sharer's thread (distributed.publish)
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._due is not None or self._closed)
                if self._closed:
                    return
                due = self._due
            assert due is not None
            # Our own row reflects this check: wait (bounded) for the publish it woke.
            self.sharer.wait_for(due + 1, timeout=self._timeout_s)
            self.read()
            with self._wake:
                self._due = None

    def read(self, *, fresh: bool = False) -> RankTable | None:
        """Read and log the table now (bounded by ``table_timeout_s``); never raises. The
        reader thread calls it at checks, over its kept connection; :meth:`close` once more at
        the end. ``fresh``: over a connection of this call's own (a reader stuck on the kept
        one would hold it)."""
        from vramguard.distributed import connect_own, table
        from vramguard.distributed.ranktable import K_MADS, read_table

        try:
            if fresh:
                result = table(timeout=self._timeout_s, store=self._store)
            else:
                if self._connection is None:
                    self._connection = connect_own(self._store, self._timeout_s)
                result = read_table(self._connection, timeout_s=self._timeout_s, k=K_MADS)
        except Exception as exc:
            if not fresh:
                self._connection = None  # a broken connection: a new one at the next read
            with self._lock:
                self.failures += 1
                first = self.failures == 1
            if first:
                _log.warning("vramguard: reading the rank table failed (%s: %s); retrying at "
                             "each check, logged only once", type(exc).__name__, exc)
            return None
        with self._wake:
            changed = result.leaking_ranks != self._flagged
            self._flagged = result.leaking_ranks
        # A newly flagged rank is a warning (shown by default); the same table again is info.
        level = logging.WARNING if changed and result.leaking_ranks else logging.INFO
        _log.log(level, "vramguard: ranks: %s\n%s", result.headline, result)
        with self._wake:  # counted once logged: a reader of ``reads`` finds the log written
            self.reads += 1
            self.latest = result
            self._wake.notify_all()
        return result

    def wait_for_reads(self, reads: int, timeout: float | None = None) -> bool:
        """Block until ``reads`` tables were read; False if ``timeout`` passed first. For tests
        and job scripts, never for steps."""
        with self._wake:
            return self._wake.wait_for(lambda: self.reads >= reads, timeout)

    def metrics(self, prefix: str = "vramguard/") -> dict[str, float]:
        """``leaking_ranks`` (how many ranks are flagged) from the latest table; empty before
        one was read (and on ranks other than 0)."""
        latest = self.latest
        if latest is None:
            return {}
        return {f"{prefix}leaking_ranks": float(len(latest.leaking_ranks))}

    def close(self, *, final_table: bool = True) -> RankTable | None:
        """Training ended: publish this rank's last summary (in this thread, bounded by the
        sharer's store timeout), stop both threads, and on rank 0 read and log the table once
        more. No thread is left running unless a store call is stuck, and then only a daemon
        thread that the process's exit ends; the caller waits at most a few timeouts.
        Idempotent: a second call returns the latest table."""
        with self._wake:
            if self._closed:
                return self.latest
        self.sharer.stop(final=True, timeout=self._timeout_s)
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._reader is None:
            return None
        self._reader.join(self._timeout_s * 2)
        stuck = self._reader.is_alive()
        if stuck:
            _log.warning("vramguard: the rank-table reader is stuck on the store; leaving it")
        return self.read(fresh=stuck) if final_table else self.latest

    def __repr__(self) -> str:
        return (f"RankSharing(rank={self.rank}, reads={self.reads}, failures={self.failures}, "
                f"skipped={self.skipped}, {self.sharer!r})")
