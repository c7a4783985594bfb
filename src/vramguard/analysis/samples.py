"""The plain values every analysis takes: one memory sample per request or step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """Memory after one request/step. ``None`` means "not measured at this sample", never 0.

    ``allocated`` is the leak signal: bytes held by live tensors (the CUDA caching allocator's
    ``allocated_bytes``, or on CPU the exact census of live tensor storages). ``device_used`` is
    what the device as a whole uses (CUDA driver-level used memory; on CPU the process RSS), so
    ``device_used - reserved`` is memory outside PyTorch.
    """

    request: int
    time: float
    allocated: int | None = None
    reserved: int | None = None
    inactive_split: int | None = None
    alloc_retries: int | None = None
    device_used: int | None = None
    device_total: int | None = None
