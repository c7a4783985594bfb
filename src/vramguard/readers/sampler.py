"""Turn the readers for one device into :class:`Sample` values: the cheap read and the census."""

from __future__ import annotations

from vramguard.analysis.samples import Sample
from vramguard.readers.allocator import AllocatorReader
from vramguard.readers.census import Census, CensusTaker
from vramguard.readers.device import Device
from vramguard.readers.process import ProcessReader


class Sampler:
    """Reads one device. ``read`` is the per-request path; ``census`` is the costly, sparse one."""

    def __init__(self, device: Device, *, driver_every: int = 16) -> None:
        self.device = device
        self._process = ProcessReader()
        self._allocator = None if device.is_cpu else AllocatorReader(device)
        self._census_taker: CensusTaker | None = None
        # cudaMemGetInfo is a driver round trip, dearer than the allocator's counters; memory
        # outside PyTorch moves slowly, so every 16th sample is enough to see it grow.
        self._driver_every = max(1, driver_every)
        self._reads = 0
        self._driver: tuple[int | None, int | None] = (None, None)

    def read(self, request: int, time: float, census: Census | None = None) -> Sample:
        """A sample after ``request``; on CPU ``census`` (when taken) supplies the tensor bytes."""
        if self._allocator is None:
            return Sample(
                request=request,
                time=time,
                allocated=None if census is None else census.total_bytes,
                device_used=self._process.rss(),
                device_total=self._process.host_total,
            )
        counters = self._allocator.read()
        if self._reads % self._driver_every == 0:
            self._driver = self._allocator.driver_used_total()
        self._reads += 1
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

    def census(self, *, groups: bool = True) -> Census:
        """Count live tensors now (costly: milliseconds on a large heap); see ``CensusTaker.take``."""
        if self._census_taker is None:
            self._census_taker = CensusTaker()
        return self._census_taker.take(groups=groups)
