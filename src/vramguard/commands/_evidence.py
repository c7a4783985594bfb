"""How much more evidence an inconclusive run needs: pure arithmetic over what the run measured.

An inconclusive verdict is never a pass (exit 5); the message says why and how many requests a
rerun should make, from the rate at which this run produced usable memory readings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vramguard.analysis.samples import Sample
from vramguard.analysis.steady_growth import MIN_POINTS
from vramguard.analysis.verdict import auto_warmup

# Readings do not arrive evenly (a census every k requests, a sparse guard on a server): ask for a
# quarter more than the bare rate says, so the rerun is not inconclusive by one reading.
_MARGIN = 1.25


def readings_after_warmup(samples: Sequence[Sample], warmup: int) -> int:
    """The allocated-memory readings the verdict could use (those past the warm-up)."""
    return sum(1 for s in samples if s.allocated is not None and s.request >= warmup)


def requests_needed(*, requests: int, warmup: int, readings: int, auto_warm: bool,
                    min_points: int = MIN_POINTS, window: int | None = None) -> int | None:
    """Total requests a rerun needs for ``min_points`` readings past the warm-up, at this run's
    rate of ``readings`` per post-warm-up request, and for a window of at least ``window``
    requests past the warm-up (a growth under the signal's floor: ``Verdict.requests_to_clear``);
    None when the run gave no rate at all.

    With ``auto_warm`` the rerun's warm-up grows with it (:func:`auto_warmup`); otherwise it
    stays ``warmup``.
    """
    measured = requests - warmup
    if readings <= 0 or measured <= 0:
        return None
    after = math.ceil(min_points * _MARGIN * measured / readings)
    if window is not None:
        after = max(after, math.ceil(window * _MARGIN))
    if not auto_warm:
        return max(requests + 1, warmup + after)
    total = after
    while total - auto_warmup(total) < after:  # at most a tenth more: a few steps
        total += 1
    return max(requests + 1, total)


def inconclusive_message(reason: str, *, requests: int, needed: int | None,
                         too_slow: bool = False) -> str:
    """The one line an inconclusive run ends with (on stderr). ``too_slow``: the growth was
    steady but slower than the signal's per-request floor (``Verdict.floor_rate``), which more
    requests at the same rate do not clear."""
    if too_slow:
        return (f"inconclusive: {reason}; more requests at this rate would not clear the "
                f"floor, so no --requests figure is given")
    if needed is None:
        return (f"inconclusive: {reason}; no usable memory reading came in, so more requests "
                "alone may not help")
    return (f"inconclusive: {reason}; about {needed - requests} more requests would help "
            f"(--requests {needed})")
