"""Turn the readers for one device into :class:`Sample` values: the cheap read and the census."""

from __future__ import annotations

import sys

from vramguard.analysis.floor import EXACT, Floor
from vramguard.analysis.samples import Sample
from vramguard.readers.allocator import AllocatorReader
from vramguard.readers.census import Census, CensusTaker
from vramguard.readers.device import Device
from vramguard.readers.heap import RATE_FLOOR_BYTES, WINDOW_FLOOR_BYTES, HeapCounter
from vramguard.readers.process import ProcessReader

HEAP_SIGNAL = "native heap in use (glibc mallinfo2)"
CENSUS_SIGNAL = "live tensor bytes (census)"
ALLOCATOR_SIGNAL = "allocator allocated_bytes"
_HEAP_FLOOR = Floor(WINDOW_FLOOR_BYTES, RATE_FLOOR_BYTES)


class Sampler:
    """Reads one device. ``read`` is the per-request path; ``census`` is the costly, sparse one.

    ``signal`` names what ``Sample.allocated`` measures here; ``fallback_reason`` says why the
    CPU heap counter is not used (None when it is, and on accelerators). ``heap`` (tests) is the
    heap counter to use on CPU.
    """

    def __init__(self, device: Device, *, driver_every: int = 16,
                 heap: HeapCounter | None = None) -> None:
        self.device = device
        self._process = ProcessReader()
        self._allocator = None if device.is_cpu else AllocatorReader(device)
        self._heap = (heap or HeapCounter()) if device.is_cpu else None
        self._census_taker: CensusTaker | None = None
        # cudaMemGetInfo is a driver round trip, dearer than the allocator's counters; memory
        # outside PyTorch moves slowly, so every 16th sample is enough to see it grow. The same
        # holds for RSS next to the CPU heap counter.
        self._driver_every = max(1, driver_every)
        self._reads = 0
        self._driver: tuple[int | None, int | None] = (None, None)

    @property
    def cheap(self) -> bool:
        """True when ``read`` alone gives ``allocated`` (allocator counters, or the CPU heap)."""
        return self._allocator is not None or (self._heap is not None and self._heap.available)

    @property
    def signal(self) -> str:
        """What ``Sample.allocated`` measures on this device."""
        if self._allocator is not None:
            return ALLOCATOR_SIGNAL
        return HEAP_SIGNAL if self.cheap else CENSUS_SIGNAL

    @property
    def floor(self) -> Floor:
        """The least growth of ``allocated`` that can count as a leak, over a verdict's window and
        per step: the heap counter's on CPU (``heap.WINDOW_FLOOR_BYTES`` and
        ``heap.RATE_FLOOR_BYTES``), none for the exact signals (allocator counters, the census),
        where the verdict's own 1 KiB minimum holds. Every judge of this sampler's series
        applies it whole."""
        return _HEAP_FLOOR if self._allocator is None and self.cheap else EXACT

    @property
    def fallback_reason(self) -> str | None:
        """Why the CPU heap counter is not the signal (None when it is, and on accelerators)."""
        if self._heap is None or self._heap.available:
            return None
        return self._heap.reason

    def read(self, request: int, time: float, census: Census | None = None) -> Sample:
        """A sample after ``request`` (hot path: one counter call; RSS at every 16th read).

        On CPU ``census`` (when taken) supplies ``tensor_bytes``, and ``allocated`` too where the
        heap counter is unavailable.
        """
        refresh = self._reads % self._driver_every == 0
        self._reads += 1
        if self._allocator is None:
            # RSS only at every 16th read, and None ("not measured") in between, so the series of
            # memory outside the heap never pairs a fresh heap reading with a stale RSS.
            rss = self._process.rss() if refresh or not self.cheap else None
            heap = self._heap.read() if self._heap is not None else None
            tensors = None if census is None else census.total_bytes
            return Sample(
                request=request,
                time=time,
                allocated=heap if heap is not None else tensors,
                device_used=rss,
                device_total=self._process.host_total,
                tensor_bytes=tensors,
            )
        counters = self._allocator.read()
        if refresh:
            self._driver = self._allocator.driver_used_total()
        used, total = self._driver
        return Sample(
            request=request,
            time=time,
            allocated=counters.allocated,
            reserved=counters.reserved,
            inactive_split=counters.inactive_split,
            alloc_retries=counters.alloc_retries,
            device_used=used,
            device_total=total,
        )

    def census(self, *, groups: bool = True, follow_graphs: bool = True) -> Census:
        """Count live tensors now (costly: milliseconds on a large heap); see ``CensusTaker.take``."""
        if self._census_taker is None:
            if "torch" not in sys.modules:
                # No tensor exists before torch is imported. Importing it here cost the service
                # 1.8 s of CPU and left 85 MB more in use on the C heap, which the guard's own
                # signal then read as a step (a Guard in a process that had not imported torch
                # yet, as a server that loads its model on first use: first census at step
                # ~5,400, measured).
                return Census(total_bytes=0, graph_bytes=0, tensor_count=0, storage_count=0,
                              groups={}, grouped=groups)
            self._census_taker = CensusTaker()
        return self._census_taker.take(groups=groups, follow_graphs=follow_graphs)
