"""The plain values the NVML gateway returns: devices, device memory, per-process memory."""

from __future__ import annotations

from dataclasses import dataclass

from vramguard.units import format_bytes


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One GPU as NVML sees it; a MIG instance has ``mig=True`` and its parent's index."""

    index: int
    uuid: str | None
    name: str | None
    mig: bool = False
    parent: int | None = None
    mig_index: int | None = None

    def __str__(self) -> str:
        if self.mig:
            return f"GPU {self.parent} MIG {self.mig_index} {self.name} ({self.uuid})"
        return f"GPU {self.index} {self.name} ({self.uuid})"


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """Device memory in bytes; ``None`` is "the driver did not say", never 0.

    ``used_bytes`` excludes ``reserved_bytes`` (driver/firmware reservations) where the driver
    reports them separately (NVML memory v2); older drivers fold them into ``used_bytes``.
    """

    used_bytes: int | None
    total_bytes: int | None
    reserved_bytes: int | None = None

    @property
    def used_fraction(self) -> float | None:
        """Used over total, or None when either is unknown."""
        if self.used_bytes is None or not self.total_bytes:
            return None
        return self.used_bytes / self.total_bytes

    def __str__(self) -> str:
        share = self.used_fraction
        pct = f" ({share:.0%})" if share is not None else ""
        return f"{format_bytes(self.used_bytes)} / {format_bytes(self.total_bytes)} used{pct}"


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """GPU memory one process holds on one device; ``used_bytes`` None when NVML cannot say."""

    pid: int
    used_bytes: int | None

    def __str__(self) -> str:
        return f"pid {self.pid}: {format_bytes(self.used_bytes)}"
