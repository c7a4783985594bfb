"""Reading the memory of the command's process tree: host RSS (psutil) and VRAM (NVML gateway).

The supervisor takes any :class:`Probe`, so a test can hand it its own readings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import psutil

from vramguard.supervise import procs
from vramguard.supervise.events import Reading


class Probe(Protocol):
    """Reads the memory of a process tree."""

    def read(self, tree: Sequence[psutil.Process]) -> Reading:
        """One reading over ``tree`` (the command's process first)."""
        ...


class TreeProbe:
    """Host RSS summed through psutil; VRAM through ``vram(pids)`` (the NVML gateway) if given.

    ``vram`` is None when no ``--max-vram`` was asked for: NVML is then never touched.
    """

    def __init__(self, vram: Callable[[Sequence[int]], int | None] | None = None) -> None:
        self.vram = vram

    def read(self, tree: Sequence[psutil.Process]) -> Reading:
        """RSS and VRAM of ``tree``."""
        vram = self.vram([p.pid for p in tree]) if self.vram is not None and tree else None
        return Reading(processes=len(tree), rss=procs.rss(tree), vram=vram,
                       vram_watched=self.vram is not None)
