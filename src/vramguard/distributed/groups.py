"""Process groups created and never destroyed: counted at the guard's samples, judged here.

Each ``torch.distributed.new_group`` holds communicators (NCCL buffers, NVLS multicast memory,
gloo sockets) until ``destroy_process_group``; a job that makes one per step or per eval cycle
runs out of memory in a way no tensor census sees (Megatron-LM#6897). The guard notes the count
of live groups (``distributed_c10d._world.pg_map``) whenever it samples memory;
:func:`groups_verdict` judges that series with the same steady-growth test as memory.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import numpy as np

from vramguard.analysis.steady_growth import MIN_POINTS, steady_growth
from vramguard.analysis.verdict import Verdict, VerdictKind

FIX = ("create each process group once and reuse it, or call "
       "torch.distributed.destroy_process_group(group) when done with it")
_MIN_GROWTH = 3.0  # groups over the window: one-off groups made after warm-up are not a leak


def live_groups() -> int | None:
    """How many process groups this process holds now; None outside an initialised job (or a
    torch without ``_world.pg_map``). Never imports torch, never raises; ~1 us."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return len(dist.distributed_c10d._world.pg_map)
    except Exception:  # a private attribute: absent or renamed in some torch -> unknown
        return None


class GroupCounts:
    """Bounded (request, live groups) history, thinned like the guard's samples when full.
    Fed by the guard's sampling thread; read by :func:`groups_verdict`."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = max(16, capacity)
        self._lock = threading.Lock()
        self._points: list[tuple[int, int]] = []
        self._min_gap = 1

    def note(self, request: int, count: int | None = None) -> None:
        """Record the live group count after ``request`` (read now unless given). Never raises:
        it runs inside the guard's sampling."""
        if count is None:
            count = live_groups()
            if count is None:
                return
        with self._lock:
            if self._points and request - self._points[-1][0] < self._min_gap:
                return
            self._points.append((request, count))
            if len(self._points) >= self._capacity:
                self._points = self._points[::2]
                self._min_gap *= 2

    @property
    def points(self) -> tuple[tuple[int, int], ...]:
        """The history, oldest first."""
        with self._lock:
            return tuple(self._points)


def groups_verdict(points: Sequence[tuple[int, int]], *, warmup: int = 0) -> Verdict | None:
    """A ``process_group_growth`` verdict when the live group count grows steadily after
    ``warmup``; None when it does not or there are too few points to say (pure)."""
    window = [(r, c) for r, c in points if r >= warmup]
    if len(window) < MIN_POINTS:
        return None
    x = np.asarray([r for r, _ in window], dtype=float)
    y = np.asarray([c for _, c in window], dtype=float)
    evidence = steady_growth(x, y, min_total=_MIN_GROWTH)
    if not evidence.growing or evidence.trend is None:
        return None
    trend = evidence.trend
    first, last = int(x[0]), int(x[-1])
    requests = last + 1
    reason = (f"live process groups grew from {int(y[0])} to {int(y[-1])} over requests "
              f"{first}..{last} ({trend.slope:+.2g} per request): groups are created and never "
              f"destroyed; fix: {FIX}")
    # No Growth and no start/end bytes: those are in bytes, and this series counts groups.
    return Verdict(VerdictKind.PROCESS_GROUP_GROWTH, requests, warmup, None, None, None, None,
                   None, (), reason)
