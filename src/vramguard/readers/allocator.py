"""Allocator counters for CUDA and other accelerators: one call into the allocator per sample.

``torch.cuda.memory_allocated()`` and ``memory_reserved()`` each build, flatten and sort the whole
stats dict; we ask the allocator once for its nested stats and read five numbers. We never call
``synchronize()`` or ``empty_cache()`` here: this runs on the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vramguard._torch import require_torch
from vramguard.readers.device import Device


@dataclass(frozen=True, slots=True)
class AllocatorReading:
    """Counters of one device's caching allocator, in bytes (retries is a count)."""

    allocated: int
    reserved: int
    active: int
    inactive_split: int
    alloc_retries: int


def _current(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key, {})
    if isinstance(value, Mapping):
        value = value.get("all", {}).get("current", 0) if "all" in value else 0
    return int(value)


def reading_from_nested(stats: Mapping[str, Any]) -> AllocatorReading:
    """Read the counters out of the allocator's nested stats dict (pure)."""
    return AllocatorReading(
        allocated=_current(stats, "allocated_bytes"),
        reserved=_current(stats, "reserved_bytes"),
        active=_current(stats, "active_bytes"),
        inactive_split=_current(stats, "inactive_split_bytes"),
        alloc_retries=int(stats.get("num_alloc_retries", 0)),
    )


class AllocatorReader:
    """Reads one accelerator's allocator; construct once, call :meth:`read` per sample (hot path)."""

    def __init__(self, device: Device) -> None:
        torch = require_torch()
        self.device = device
        self._torch = torch
        self._nested_stats: Callable[[int], Mapping[str, Any]]
        # The private nested-stats entry points are what the public memory_stats() wraps before it
        # flattens; fall back to the public (slower) functions if a torch release renames them.
        if device.kind == "cuda":
            self._nested_stats = getattr(
                torch._C, "_cuda_memoryStats", torch.cuda.memory_stats_as_nested_dict
            )
        else:
            self._nested_stats = getattr(torch._C, "_accelerator_getDeviceStats", _public_stats)

    def read(self) -> AllocatorReading:
        """One sample of the allocator counters (hot path: one call into the allocator)."""
        return reading_from_nested(self._nested_stats(self.device.index or 0))

    def driver_used_total(self) -> tuple[int | None, int | None]:
        """Driver-level (used, total) bytes; includes memory outside PyTorch. Costlier: sample sparsely."""
        try:
            if self.device.kind == "cuda":
                free, total = self._torch.cuda.mem_get_info(self.device.index)
            else:
                free, total = self._torch.accelerator.get_memory_info(self.device.index)
        except (RuntimeError, AttributeError):
            return None, None  # not every backend reports driver-level memory: unknown, not 0
        return int(total - free), int(total)


def _public_stats(index: int) -> Mapping[str, Any]:
    torch = require_torch()
    flat = torch.accelerator.memory_stats(index)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[2] == "current":
            nested.setdefault(parts[0], {}).setdefault(parts[1], {})["current"] = value
        elif len(parts) == 1:
            nested[key] = value
    return nested
