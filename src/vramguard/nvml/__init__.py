"""The one NVML gateway: every call vramguard makes to the NVIDIA driver goes through here.

API (stable; ``monitor`` and ``supervise`` use exactly this)::

    from vramguard.nvml import Nvml, DeviceInfo, DeviceMemory, ProcessMemory

    nvml = Nvml()                      # nothing loaded yet: initialisation is lazy and locked
    nvml = Nvml(library_path="/x/libnvidia-ml.so.1")   # inject the library (tests, odd installs)
    nvml = Nvml(library_path=default_library_path())   # $VRAMGUARD_NVML_LIBRARY, else None

    nvml.devices()        -> list[DeviceInfo]      # physical devices, then their MIG instances
        DeviceInfo(index: int, uuid: str | None, name: str | None, mig: bool = False,
                   parent: int | None = None,  # physical index of a MIG instance's parent
                   mig_index: int | None = None)  # uuid/name None: lost before first read
    nvml.memory(index, mig_index=None) -> DeviceMemory(used_bytes, total_bytes, reserved_bytes)
        # int | None each; used excludes reserved where the driver has memory v2
    nvml.processes(index, mig_index=None) -> list[ProcessMemory(pid: int, used_bytes: int | None)]
        # compute processes; tries the v3 symbol, then v2, then v1 when a symbol is missing;
        # NVML_VALUE_NOT_AVAILABLE becomes None ("unknown"), never 0
    nvml.process_vram(pids: set[int]) -> int | None
        # VRAM of those pids summed over every device and MIG instance; 0 when none is listed;
        # None when no device could be read or a listed pid's value is unknown
    nvml.is_lost(index) -> bool        # a device that returned GPU_IS_LOST stays marked lost
    nvml.close()                       # nvmlShutdown if we initialised (also a context manager)

Errors (all subclasses of ``vramguard.errors.VramguardError``, defined in ``vramguard.errors``):
    NvmlMissing (an EnvironmentProblem, exit 3: library or driver missing, with a hint),
    NvmlNotSupported, NvmlNoPermission, GpuLost (carries ``.index``; the device is marked lost),
    NvmlError (anything else from the driver).

Indexes are NVML's physical indexes (what ``nvidia-smi`` shows), not CUDA_VISIBLE_DEVICES order.
"""

from __future__ import annotations

from vramguard.errors import GpuLost, NvmlError, NvmlMissing, NvmlNoPermission, NvmlNotSupported
from vramguard.nvml.gateway import Nvml, default_library_path
from vramguard.nvml.types import DeviceInfo, DeviceMemory, ProcessMemory

__all__ = [
    "DeviceInfo",
    "DeviceMemory",
    "GpuLost",
    "Nvml",
    "NvmlError",
    "NvmlMissing",
    "NvmlNoPermission",
    "NvmlNotSupported",
    "ProcessMemory",
    "default_library_path",
]
