"""The web adapters' clean-up policy: ``gc`` and the allocator cache released between requests,
every N requests (``cleanup_every``) or when reserved minus allocated exceeds a size
(``cleanup_above``, accelerators only). Opt-in; its runs, freed bytes and cost are reported."""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass

from vramguard.adapters.options import WebOptions
from vramguard.readers.device import Device
from vramguard.readers.sampler import Sampler


@dataclass(frozen=True, slots=True)
class CleanupStats:
    """What the clean-up policy did: runs, bytes it gave back (None: unknown), time it cost."""

    runs: int = 0
    freed_bytes: int | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        freed = "unknown" if self.freed_bytes is None else f"{self.freed_bytes} B"
        return f"{self.runs} clean-ups freed {freed} in {self.seconds * 1000:.1f} ms"


class Cleanup:
    """The policy for one web guard; thread-safe."""

    def __init__(self, options: WebOptions, device: Device, sampler: Sampler) -> None:
        self._options = options
        self._device = device
        self._sampler = sampler
        self._lock = threading.Lock()
        self._since = 0
        self.stats = CleanupStats()

    def quiet(self) -> None:
        """No request is in flight now: run the clean-up if the policy says it is due."""
        options = self._options
        if options.cleanup_every is None and options.cleanup_above is None:
            return
        with self._lock:
            self._since += 1
            due = options.cleanup_every is not None and self._since >= options.cleanup_every
        if not due and options.cleanup_above is not None and not self._device.is_cpu:
            sample = self._sampler.read(0, 0.0)
            if sample.reserved is not None and sample.allocated is not None:
                due = sample.reserved - sample.allocated > options.cleanup_above
        if due:
            self.run()

    def run(self) -> CleanupStats:
        """Run gc and release the allocator's cached blocks now; returns the running totals."""
        def level() -> int | None:
            if self._device.is_cpu:
                return self._sampler.read(0, 0.0).device_used  # RSS: what the host gets back
            return self._sampler.read(0, 0.0).reserved
        before = level()
        started = time.perf_counter()
        gc.collect()
        if not self._device.is_cpu:
            from vramguard._torch import require_torch
            from vramguard.release import empty_cache

            empty_cache(require_torch(), self._device)
        cost = time.perf_counter() - started
        after = level()
        with self._lock:
            old = self.stats
            freed = None if before is None or after is None or (
                old.runs and old.freed_bytes is None) else (old.freed_bytes or 0) + before - after
            self.stats = CleanupStats(old.runs + 1, freed, old.seconds + cost)
            self._since = 0
            return self.stats
