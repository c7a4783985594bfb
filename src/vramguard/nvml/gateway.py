"""The NVML gateway: lazy, locked initialisation and the driver's errors mapped to vramguard's.

Modelled on nvitop's ``libnvml.py`` without its silent ``ignore_errors`` default: every failure
becomes a :class:`~vramguard.errors.VramguardError` subclass, and callers decide what is "unknown".
NVML is never called from a user's request path: only the monitor's and supervisor's samplers do.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vramguard.errors import GpuLost, NvmlError, NvmlMissing, NvmlNoPermission, NvmlNotSupported
from vramguard.nvml.types import DeviceInfo, DeviceMemory, ProcessMemory

LIBRARY_VARIABLE = "VRAMGUARD_NVML_LIBRARY"
_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE for unsigned long long fields
_MISSING_HINT = (
    "NVML (libnvidia-ml.so.1) ships with the NVIDIA driver: install the driver, or run the "
    "container with the NVIDIA container toolkit (--gpus all); set VRAMGUARD_NVML_LIBRARY to the "
    "library's path if it lives elsewhere"
)
T = TypeVar("T")
Key = tuple[int, int | None]  # (physical index, MIG slot or None)


def default_library_path() -> str | None:
    """The NVML library to load: ``$VRAMGUARD_NVML_LIBRARY``, else None (the normal search path)."""
    return os.environ.get(LIBRARY_VARIABLE) or None


def _known(value: int) -> int | None:
    return None if value == _NOT_AVAILABLE else int(value)


class _ProcessInfoV1(ctypes.Structure):
    # nvmlProcessInfo_v1_t; current nvidia-ml-py no longer wraps the unversioned symbol.
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class Nvml:
    """One handle on the NVIDIA driver; see the package docstring for the API.

    Nothing is loaded until the first query. ``library_path`` injects the library (tests,
    unusual installs); the default is the normal search path, as ``pynvml`` does it.
    """

    def __init__(self, library_path: str | os.PathLike[str] | None = None) -> None:
        self._library_path = None if library_path is None else os.fspath(library_path)
        self._lock = threading.RLock()
        self._initialised = False
        self._handles: dict[Key, Any] = {}
        self._infos: dict[Key, DeviceInfo] = {}
        self._lost: set[int] = set()
        self._memory_v2 = True
        self._process_versions = ["v3", "v2", "v1"]

    # -- lifecycle ---------------------------------------------------------------------------

    def _nvml(self) -> Any:
        """The initialised ``pynvml`` module (initialising it once, under the lock)."""
        with self._lock:
            try:
                import pynvml
            except ImportError as exc:  # pragma: no cover - it is a dependency
                raise NvmlMissing("the nvidia-ml-py package is not installed",
                                  hint="pip install nvidia-ml-py") from exc
            if self._initialised:
                return pynvml
            if self._library_path is not None:
                _load_library(pynvml, self._library_path)
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise _translate(pynvml, exc, "initialising NVML", None) from exc
            self._initialised = True
            return pynvml

    def close(self) -> None:
        """Shut NVML down if this object initialised it."""
        with self._lock:
            if not self._initialised:
                return
            import pynvml

            self._initialised = False
            self._handles.clear()
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                raise _translate(pynvml, exc, "shutting NVML down", None) from exc

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------

    def _call(self, what: str, index: int | None, fn: Callable[..., T], *args: Any) -> T:
        pynvml = self._nvml()
        if index is not None and index in self._lost:
            # A lost GPU stays lost until reset; asking again only floods the driver log.
            raise GpuLost(f"GPU {index} is lost", index=index)
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            error = _translate(pynvml, exc, what, index)
            if isinstance(error, GpuLost) and index is not None:
                self._lost.add(index)
            raise error from exc

    def _handle(self, index: int, mig_index: int | None = None) -> Any:
        key = (index, mig_index)
        with self._lock:
            if key not in self._handles:
                pynvml = self._nvml()
                handle = self._call(f"opening GPU {index}", index,
                                    pynvml.nvmlDeviceGetHandleByIndex, index)
                if mig_index is not None:
                    handle = self._call(f"opening MIG {mig_index} of GPU {index}", index,
                                        pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle,
                                        mig_index)
                self._handles[key] = handle
            return self._handles[key]

    def is_lost(self, index: int) -> bool:
        """True once the device returned NVML_ERROR_GPU_IS_LOST."""
        return index in self._lost

    def devices(self) -> list[DeviceInfo]:
        """Every physical device, each followed by its MIG instances where MIG is enabled.

        A lost device is still listed (with what was known of it) so it can be reported as lost.
        """
        pynvml = self._nvml()
        count = self._call("counting GPUs", None, pynvml.nvmlDeviceGetCount)
        found: list[DeviceInfo] = []
        for index in range(count):
            try:
                found.append(self._identity(index, None))
                found.extend(self._mig_instances(index))
            except GpuLost:
                found.append(self._infos.get((index, None),
                                             DeviceInfo(index=index, uuid=None, name=None)))
        return found

    def _identity(self, index: int, mig_index: int | None) -> DeviceInfo:
        key = (index, mig_index)
        if key not in self._infos:
            pynvml = self._nvml()
            handle = self._handle(index, mig_index)
            uuid = self._call("reading the UUID", index, pynvml.nvmlDeviceGetUUID, handle)
            name = self._call("reading the name", index, pynvml.nvmlDeviceGetName, handle)
            self._infos[key] = DeviceInfo(
                index=index, uuid=uuid, name=name, mig=mig_index is not None,
                parent=index if mig_index is not None else None, mig_index=mig_index)
        return self._infos[key]

    def _mig_instances(self, index: int) -> list[DeviceInfo]:
        pynvml = self._nvml()
        handle = self._handle(index)
        try:
            current, _pending = self._call("reading MIG mode", index,
                                           pynvml.nvmlDeviceGetMigMode, handle)
        except NvmlNotSupported:
            return []
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = self._call("counting MIG instances", index,
                           pynvml.nvmlDeviceGetMaxMigDeviceCount, handle)
        instances = []
        for slot in range(slots):
            try:
                instances.append(self._identity(index, slot))
            except NvmlError as exc:
                if exc.code != pynvml.NVML_ERROR_NOT_FOUND:
                    raise
                self._handles.pop((index, slot), None)
        return instances

    def memory(self, index: int, mig_index: int | None = None) -> DeviceMemory:
        """Used, total and (NVML memory v2) reserved bytes of one device or MIG instance."""
        pynvml = self._nvml()
        handle = self._handle(index, mig_index)
        if self._memory_v2:
            try:
                info = self._call("reading memory", index, pynvml.nvmlDeviceGetMemoryInfo,
                                  handle, pynvml.nvmlMemory_v2)
                return DeviceMemory(_known(info.used), _known(info.total), _known(info.reserved))
            except NvmlNotSupported:
                # An older driver: no v2 symbol, or v2 refused. Remember, so we ask v1 only.
                self._memory_v2 = False
        info = self._call("reading memory", index, pynvml.nvmlDeviceGetMemoryInfo, handle)
        return DeviceMemory(_known(info.used), _known(info.total), None)

    def processes(self, index: int, mig_index: int | None = None) -> list[ProcessMemory]:
        """Compute processes on one device with their memory (v3, else v2, else v1 symbol)."""
        handle = self._handle(index, mig_index)
        while True:
            version = self._process_versions[0]
            try:
                raw = self._call("listing processes", index, self._process_reader(version),
                                 handle)
            except NvmlNotSupported as exc:
                if exc.code != _function_not_found() or len(self._process_versions) == 1:
                    raise
                # The driver predates this symbol: fall back once, and remember.
                self._process_versions.pop(0)
                continue
            return [ProcessMemory(pid, used) for pid, used in raw]

    def _process_reader(self, version: str) -> Callable[[Any], list[tuple[int, int | None]]]:
        pynvml = self._nvml()
        if version == "v1":
            return lambda handle: _processes_v1(pynvml, handle)
        fn = getattr(pynvml, f"nvmlDeviceGetComputeRunningProcesses_{version}")
        # pynvml already turns NVML_VALUE_NOT_AVAILABLE into None for these versions.
        return lambda handle: [(int(p.pid), None if p.usedGpuMemory is None
                                else _known(p.usedGpuMemory)) for p in fn(handle)]

    def process_vram(self, pids: set[int]) -> int | None:
        """VRAM held by ``pids`` over every device and MIG instance, in bytes.

        0 when no device lists any of them; None when no device could be read, or a listed pid's
        memory is unknown (a partial sum would understate it).
        """
        total = 0
        readable = False
        for device in self.devices():
            try:
                listed = self.processes(device.index, device.mig_index)
            except (NvmlNotSupported, NvmlNoPermission, GpuLost):
                continue
            readable = True
            for process in listed:
                if process.pid not in pids:
                    continue
                if process.used_bytes is None:
                    return None
                total += process.used_bytes
        return total if readable else None


def _function_not_found() -> int:
    import pynvml

    return int(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)


def _processes_v1(pynvml: Any, handle: Any) -> list[tuple[int, int | None]]:
    # The same two-call protocol pynvml uses for v2/v3: ask the size, then fill.
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses")
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5
    infos = (_ProcessInfoV1 * count.value)()
    ret = fn(handle, ctypes.byref(count), infos)
    if ret != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(ret)
    return [(int(infos[i].pid), _known(infos[i].usedGpuMemory)) for i in range(count.value)]


def _load_library(pynvml: Any, path: str) -> None:
    """Make ``pynvml`` use the library at ``path`` (what ``nvmlInit`` would otherwise find).

    pynvml keeps one library per process (``nvmlLib``) and caches function pointers by name, so
    a different library may only replace it while nobody has NVML initialised, and the pointer
    cache must go with it. Both happen under pynvml's own ``libLoadLock``.
    """
    with pynvml.libLoadLock:
        current = pynvml.nvmlLib
        if current is not None and getattr(current, "_name", None) == path:
            return
        if current is not None and pynvml._nvmlLib_refcount > 0:
            raise NvmlError(
                f"cannot load the NVML library {path!r}: another one "
                f"({getattr(current, '_name', '?')!r}) is in use in this process")
        try:
            library = ctypes.CDLL(path)
        except OSError as exc:
            raise NvmlMissing(f"cannot load the NVML library {path!r}: {exc}",
                              hint=_MISSING_HINT) from exc
        pynvml.nvmlLib = library
        pynvml._nvmlGetFunctionPointer_cache.clear()


def _translate(pynvml: Any, exc: Exception, what: str,
               index: int | None) -> NvmlError | NvmlMissing:
    """Map a pynvml error to vramguard's exception for it."""
    code = getattr(exc, "value", None)
    where = f" on GPU {index}" if index is not None else ""
    message = f"NVML failed {what}{where}: {exc}"
    if code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
        return NvmlMissing(f"NVML is not usable: {exc}", hint=_MISSING_HINT)
    if code == pynvml.NVML_ERROR_GPU_IS_LOST and index is not None:
        return GpuLost(f"GPU {index} is lost ({what})", index=index, code=code)
    if code in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
        return NvmlNotSupported(message, code=code)
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return NvmlNoPermission(message, code=code, hint="per-process GPU memory often needs "
                                "root or the container's PID namespace")
    if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return NvmlError(message, code=code, hint="the driver was upgraded without a reboot")
    return NvmlError(message, code=code)
