"""The plain values every analysis takes: one memory sample per request or step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


_INT_FIELDS = ("request", "allocated", "reserved", "inactive_split", "alloc_retries",
               "device_used", "device_total", "tensor_bytes")
_NONE = np.iinfo(np.int64).min  # "not measured": no reading is ever this negative


class SampleStore:
    """Up to ``capacity`` samples, evenly spread over the whole run, in arrays allocated once.

    Why not a list of :class:`Sample`: on CPU the signal is the C heap, and every kept Sample
    (an object and its ints, ~150 B) would itself grow the counter it records, until the store
    is full and thins: a sawtooth of the guard's own making, which a short run reads as a leak
    of ~150 B per request (measured: +300 B/request on a warmed, clean FastAPI route with the
    route book and the history both keeping Samples). Here a kept sample is a row of numbers;
    the Sample values are built on demand and die with the caller's analysis.

    When full, every other row is dropped and the least gap between kept requests doubles, so
    the spacing stays even (a guard runs for weeks: the resolution halves, the span never
    shrinks). Samples must arrive in request order. Not thread-safe.
    """

    __slots__ = ("_ints", "_times", "capacity", "count", "even", "min_gap")

    def __init__(self, capacity: int, *, even: bool = False) -> None:
        self.capacity = max(2, capacity)
        self._ints = np.full((self.capacity, len(_INT_FIELDS)), _NONE, dtype=np.int64)
        self._times = np.zeros(self.capacity, dtype=np.float64)
        self.count = 0
        self.min_gap = 1
        # ``even``: after thinning, the least gap is the kept rows' own mean gap, not only the
        # last one doubled. Where samples came sparser than every request (the guard's reads,
        # every few steps), doubling from 1 would accept new ones far denser than the kept, and
        # the guard that asks what the store will keep (``min_gap``) would read for nothing.
        self.even = even

    def add(self, sample: Sample) -> bool:
        """Keep ``sample`` if the spacing allows (True when kept)."""
        if self.count and sample.request - int(self._ints[self.count - 1, 0]) < self.min_gap:
            return False  # thinned away: the store stays evenly spread
        row = self._ints[self.count]
        for column, name in enumerate(_INT_FIELDS):
            value = getattr(sample, name)
            row[column] = _NONE if value is None else value
        self._times[self.count] = sample.time
        self.count += 1
        if self.count >= self.capacity:
            kept = (self.count + 1) // 2
            self._ints[:kept] = self._ints[: self.count : 2].copy()
            self._times[:kept] = self._times[: self.count : 2].copy()
            self._ints[kept:] = _NONE
            self.count = kept
            self.min_gap *= 2
            if self.even and kept > 1:
                span = int(self._ints[kept - 1, 0] - self._ints[0, 0])
                self.min_gap = max(self.min_gap, span // (kept - 1))
        return True

    @property
    def last_request(self) -> int | None:
        """The request of the newest kept sample (None when empty)."""
        return int(self._ints[self.count - 1, 0]) if self.count else None

    @property
    def samples(self) -> list[Sample]:
        """The kept samples, oldest first (new objects: the caller's to keep or drop)."""
        rows: list[list[int]] = self._ints[: self.count].tolist()
        times: list[float] = self._times[: self.count].tolist()
        return [Sample(row[0], moment, *(None if value == _NONE else value for value in row[1:]))
                for row, moment in zip(rows, times, strict=True)]
