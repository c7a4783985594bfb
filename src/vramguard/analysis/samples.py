"""The plain values every analysis takes: one memory sample per request or step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """Memory after one request/step. ``None`` means "not measured at this sample", never 0.

    ``allocated`` is the leak signal, read cheaply at every sample: the CUDA caching allocator's
    ``allocated_bytes``, or on CPU the C heap's in-use bytes (glibc ``mallinfo2``: tensor storage
    plus what autograd graphs and other native code hold; where that counter is unavailable, the
    census's live tensor bytes). ``tensor_bytes`` is the census's storage bytes of the tensors
    Python references, on CPU, at the sparse samples where a census ran (None elsewhere).
    ``device_used`` is what the device as a whole uses (CUDA driver-level used memory; on CPU the
    process RSS), so ``device_used - reserved`` is memory outside PyTorch.
    """

    request: int
    time: float
    allocated: int | None = None
    reserved: int | None = None
    inactive_split: int | None = None
    alloc_retries: int | None = None
    device_used: int | None = None
    device_total: int | None = None
    tensor_bytes: int | None = None
