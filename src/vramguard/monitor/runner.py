"""The sampling loop: read a snapshot, evaluate rules, hand events to actions, publish the
snapshot for the exporter. Clocks, the NVML gateway and the actions are injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from vramguard.monitor.actions import Action
from vramguard.monitor.placement import Placement
from vramguard.monitor.readings import Snapshot, read_snapshot
from vramguard.monitor.rules import RuleEngine
from vramguard.nvml import Nvml


@dataclass(slots=True)
class Monitor:
    """Samples every ``interval`` seconds until ``stop`` is set or a bound is reached.

    The latest snapshot is kept in one attribute (swapped whole, so the exporter thread reads a
    consistent one without a lock); nothing else accumulates per sample.
    """

    nvml: Nvml
    engine: RuleEngine
    actions: Sequence[Action]
    interval: float = 1.0
    devices: Collection[int] | None = None
    processes: bool = True
    placement: Callable[[int], Placement | None] | None = None  # for the cross_device rule
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    stop: threading.Event = field(default_factory=threading.Event)
    latest: Snapshot | None = None
    samples: int = 0

    def sample(self) -> Snapshot:
        """One reading, evaluated and acted on."""
        snapshot = read_snapshot(self.nvml, time=self.clock(), wall=self.wall_clock(),
                                 devices=self.devices, processes=self.processes,
                                 placement=self.placement)
        self.latest = snapshot
        self.samples += 1
        for event in self.engine.evaluate(snapshot):
            for action in self.actions:
                action(event)
        return snapshot

    def run(self, *, max_samples: int | None = None, duration: float | None = None) -> None:
        """Sample until stopped, ``max_samples`` taken or ``duration`` seconds passed.

        Sleeps to the next multiple of ``interval`` after the start, so slow samples do not make
        the schedule drift.
        """
        start = self.clock()
        taken = 0
        while not self.stop.is_set():
            self.sample()
            taken += 1
            if max_samples is not None and taken >= max_samples:
                return
            now = self.clock()
            if duration is not None and now - start >= duration:
                return
            wait = self.interval - ((now - start) % self.interval) if self.interval > 0 else 0
            if duration is not None:
                wait = min(wait, max(0.0, start + duration - now))
            if wait > 0 and self.stop.wait(wait):
                return
