"""``vramguard.release()``: "delete references and clear the cache", done right, with a receipt.

People write ``del x; gc.collect(); torch.cuda.empty_cache()`` and never learn whether it freed
anything. ``release()`` runs the same steps in the order that works (collect first, so tensors
held by reference cycles are freed *before* the allocator returns its cache) and returns what
the device held before and after.

Not for the request path: a full collection costs milliseconds to seconds on a large heap.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from vramguard._torch import require_torch
from vramguard.readers.device import Device, resolve_device
from vramguard.units import format_bytes


@dataclass(frozen=True, slots=True)
class Released:
    """What :func:`release` freed on one device. ``None`` means not measured, never 0.

    ``allocated_*`` are bytes held by live tensors (the caching allocator's counter on CUDA,
    the live-tensor census on CPU); ``reserved_*`` are bytes the caching allocator holds from
    the device (``None`` on CPU, which has no caching allocator). ``collected`` is what
    ``gc.collect()`` returned: unreachable objects found.
    """

    device: str
    allocated_before: int | None
    allocated_after: int | None
    reserved_before: int | None
    reserved_after: int | None
    collected: int
    cache_emptied: bool

    @property
    def freed_allocated(self) -> int | None:
        """Tensor bytes freed (negative if something allocated meanwhile); None if unmeasured."""
        return _minus(self.allocated_before, self.allocated_after)

    @property
    def freed_reserved(self) -> int | None:
        """Cache bytes given back to the device; None where there is no caching allocator."""
        return _minus(self.reserved_before, self.reserved_after)

    def __str__(self) -> str:
        parts = [f"released on {self.device}:"]
        freed = self.freed_allocated
        if freed is not None:
            parts.append(f"{format_bytes(freed)} of tensors"
                         f" ({format_bytes(self.allocated_before)} -> "
                         f"{format_bytes(self.allocated_after)})")
        cache = self.freed_reserved
        if cache is not None:
            parts.append(f"{format_bytes(cache)} of allocator cache"
                         f" ({format_bytes(self.reserved_before)} -> "
                         f"{format_bytes(self.reserved_after)})")
        parts.append(f"gc collected {self.collected} objects")
        return " ".join(parts[:1]) + " " + ", ".join(parts[1:])


def _minus(before: int | None, after: int | None) -> int | None:
    if before is None or after is None:
        return None
    return before - after


def release(device: str | None = None) -> Released:
    """Collect garbage, then return the allocator's cached memory to the device; say what it freed.

    ``device``: "cpu", "cuda", "cuda:1", ... ``None`` picks the current CUDA device when this
    process has already initialised CUDA, else the CPU: ``release()`` never initialises CUDA
    itself (that alone would take hundreds of MiB of device memory).
    """
    torch = require_torch()
    cuda_ready = bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if cuda_ready else "cpu"
    resolved = resolve_device(device)
    if resolved.is_cpu:
        return _release_cpu()
    return _release_accelerator(torch, resolved)


def _release_accelerator(torch: Any, device: Device) -> Released:
    from vramguard.readers.allocator import AllocatorReader

    reader = AllocatorReader(device)
    index = device.index or 0
    # Pending kernels may still use memory that frees only when they finish; counters read
    # before synchronising would credit release() with frees it did not cause.
    if device.kind == "cuda":
        torch.cuda.synchronize(index)
    before = reader.read()
    collected = gc.collect()
    emptied = empty_cache(torch, device)
    after = reader.read()
    return Released(str(device), before.allocated, after.allocated, before.reserved,
                    after.reserved, collected, cache_emptied=emptied)


def empty_cache(torch: Any, device: Device) -> bool:
    """Return ``device``'s cached allocator blocks to the driver; False where this torch has no
    way to (an old build without ``torch.accelerator.empty_cache``). No-op on the CPU."""
    if device.is_cpu:
        return False
    if device.kind == "cuda":
        with torch.cuda.device(device.index or 0):
            torch.cuda.empty_cache()
        return True
    if hasattr(torch, "accelerator") and hasattr(torch.accelerator, "empty_cache"):
        torch.accelerator.empty_cache()
        return True
    return False


def _release_cpu() -> Released:
    from vramguard.readers.census import CensusTaker

    # Host memory has no caching allocator to empty; the census measures what the collection
    # freed in tensors (RSS would not say: glibc keeps freed pages).
    taker = CensusTaker()
    before = taker.take().bytes_on("cpu")
    collected = gc.collect()
    after = taker.take().bytes_on("cpu")
    return Released("cpu", before, after, None, None, collected, cache_emptied=False)
