"""One reading of every watched device: the only part of the monitor that talks to NVML.

Everything downstream (rules, exporter, JSON) works on the plain :class:`Snapshot` this returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from vramguard.errors import GpuLost, NvmlNoPermission, NvmlNotSupported
from vramguard.monitor.placement import Placement
from vramguard.nvml import Nvml, ProcessMemory
from vramguard.units import format_bytes

SCHEMA = "vramguard.monitor/1"


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """Memory of one device at one moment; ``None`` values are unknown, never 0."""

    index: int
    uuid: str | None
    name: str | None
    used_bytes: int | None
    total_bytes: int | None
    lost: bool = False
    processes: tuple[ProcessMemory, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``devices[]`` entry of the ``vramguard.monitor/1`` document."""
        return {
            "index": self.index, "uuid": self.uuid, "name": self.name,
            "used_bytes": self.used_bytes, "total_bytes": self.total_bytes, "lost": self.lost,
            "processes": [{"pid": p.pid, "used_bytes": p.used_bytes} for p in self.processes],
        }

    def __str__(self) -> str:
        if self.lost:
            return f"GPU {self.index} {self.name or ''} LOST".replace("  ", " ")
        share = ""
        if self.used_bytes is not None and self.total_bytes:
            share = f" ({self.used_bytes / self.total_bytes:.0%})"
        head = (f"GPU {self.index} {self.name or 'unknown'}: {format_bytes(self.used_bytes)} / "
                f"{format_bytes(self.total_bytes)}{share}")
        return "\n".join([head, *(f"  {p}" for p in self.processes)])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every watched device at one moment: ``time`` is monotonic seconds, ``wall`` epoch seconds.
    ``placements``: the listed processes whose environment pins a GPU (``cross_device``)."""

    time: float
    wall: float
    devices: tuple[DeviceReading, ...] = field(default_factory=tuple)
    placements: tuple[Placement, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The ``vramguard.monitor/1`` document that ``monitor --once --json`` prints."""
        return {"schema": SCHEMA, "devices": [d.to_json() for d in self.devices]}

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.devices) or "no GPU"


def read_snapshot(nvml: Nvml, *, time: float, wall: float, devices: Collection[int] | None = None,
                  processes: bool = True,
                  placement: Callable[[int], Placement | None] | None = None) -> Snapshot:
    """Read the physical devices (those in ``devices``, or all); a lost device reads as lost.
    ``placement`` (e.g. :func:`~vramguard.monitor.placement.read_placement`) is asked once per
    listed process.

    Memory the driver refuses (not supported, no permission) reads as unknown; so does a refused
    per-process list, which reads as empty: the rest is still worth reporting.
    """
    readings = []
    for info in nvml.devices():
        if info.mig or (devices is not None and info.index not in devices):
            continue
        used = total = None
        listed: tuple[ProcessMemory, ...] = ()
        lost = nvml.is_lost(info.index)
        if not lost:
            try:
                try:
                    memory = nvml.memory(info.index)
                    used, total = memory.used_bytes, memory.total_bytes
                except (NvmlNotSupported, NvmlNoPermission):
                    pass  # stays unknown (None), reported as null
                if processes:
                    try:
                        listed = tuple(nvml.processes(info.index))
                    except (NvmlNotSupported, NvmlNoPermission):
                        listed = ()
            except GpuLost:
                lost = True
        readings.append(DeviceReading(info.index, info.uuid, info.name, used, total, lost, listed))
    placed: tuple[Placement, ...] = ()
    if placement is not None:
        pids = sorted({p.pid for reading in readings for p in reading.processes})
        placed = tuple(found for pid in pids if (found := placement(pid)) is not None)
    return Snapshot(time=time, wall=wall, devices=tuple(readings), placements=placed)
