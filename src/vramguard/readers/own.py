"""vramguard's own diagnosis work, process-wide: while it runs, the C heap counter measures it too.

The CPU signal (``mallinfo2``) counts every allocation of the process, vramguard's included: a
diagnosis window's site records, censuses and heap snapshot are megabytes that come and go,
which would read as spikes in the guard's series. Each diagnosis marks its spans here (each
tracked step, the analysis) and a guard takes no sample inside one. Nothing is subtracted
afterwards: setting aside what the heap changed by across a span also removed the service's own
growth over it, and a run mostly spent in a diagnosis window then read as flat (a false "no
leak"). What the diagnosis keeps after it ends (records of live tensors only) is small.
"""

from __future__ import annotations

import threading


class _OwnWork:
    # One per process: the heap it describes is the process's.
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    def begin(self) -> None:
        with self._lock:
            self.active += 1

    def end(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


_WORK = _OwnWork()


def begin() -> None:
    """A diagnosis of vramguard's starts (pair with :func:`end`, in ``finally``)."""
    _WORK.begin()


def end() -> None:
    """A diagnosis of vramguard's ended."""
    _WORK.end()


def running() -> bool:
    """Whether one runs now (one read, no lock: ~50 ns)."""
    return _WORK.active > 0
