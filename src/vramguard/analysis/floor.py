"""The least growth a signal's series must show before it can count as a leak: one value.

An exact signal (the allocator's counters, the census's tensor bytes) moves only when memory is
kept, so its floor is zero (the verdict's own 1 KiB minimum still holds). The CPU heap counter
also moves with Python's and the libraries' own allocations, so its growth counts only above a
floor over the verdict's window and per step. The two numbers belong together: the sampler
that knows the signal owns one :class:`Floor`, and it travels whole to ``decide()``, the verdict
keeper, the status document and ``vramguard loadtest`` (which reads it back from a server), so no
judge of a series can apply one number and forget the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramguard.units import format_bytes


@dataclass(frozen=True, slots=True)
class Floor:
    """``window_bytes``: the least growth over a verdict's window; ``bytes_per_step``: the least
    growth per step (request) of that window's recent half, so a long window's drift cannot sum
    past ``window_bytes`` and a late leak is not diluted by the flat start of its window. Both 0
    for an exact signal. The status shows them as
    ``memory.floor_bytes`` and ``memory.floor_bytes_per_request``."""

    window_bytes: int = 0
    bytes_per_step: int = 0

    def __post_init__(self) -> None:
        for name in ("window_bytes", "bytes_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"expected Floor.{name} to be a non-negative number of bytes, "
                                 f"got {value!r}")

    def widest(self, other: Floor) -> Floor:
        """Each part the larger of the two (a client that read several floors applies all)."""
        return Floor(max(self.window_bytes, other.window_bytes),
                     max(self.bytes_per_step, other.bytes_per_step))

    def __bool__(self) -> bool:
        return bool(self.window_bytes or self.bytes_per_step)

    def __str__(self) -> str:
        if not self:
            return "no floor (exact signal)"
        return (f"{format_bytes(self.window_bytes)} over the window and "
                f"{format_bytes(self.bytes_per_step)}/step over its recent half")


EXACT = Floor()
"""The floor of an exact signal: none beyond the verdict's own minimum."""
