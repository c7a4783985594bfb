"""vramguard's own diagnosis work, process-wide: while it runs, the C heap counter measures it too.

The CPU signal (``mallinfo2``) counts every allocation of the process, vramguard's included: a
diagnosis window's site records, censuses and heap snapshot are megabytes that come and go,
which would read as a spike, or as a step if some of it stays. Each diagnosis marks its span
here; a guard skips the samples that fall inside one and sets aside what the heap changed by
across it (see ``Guard._without_own_work``), so its series shows the service's memory only.
"""

from __future__ import annotations

import threading


class _OwnWork:
    # One per process: the heap it describes is the process's.
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.generation = 0

    def begin(self) -> None:
        with self._lock:
            self.active += 1
            self.generation += 1

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


def state() -> tuple[bool, int]:
    """(is one running now, how many have begun in this process); two reads, no lock (~100 ns)."""
    return _WORK.active > 0, _WORK.generation
