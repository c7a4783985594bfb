"""The native heap in use, from glibc's ``mallinfo2()``: the CPU analogue of CUDA's allocator counters.

PyTorch allocates CPU tensor storage with ``posix_memalign``, so the C heap's in-use bytes
(``uordblks``, small and medium blocks, plus ``hblkhd``, the blocks malloc served with ``mmap``)
rise by exactly a tensor's size when it is made and fall back when it is freed. They also count
what an autograd graph keeps outside tensor storage (its nodes), which a census of Python-visible
tensors cannot see, and, unlike RSS, they fall when memory is freed. One read costs ~0.3-3 us
through ctypes (it sums the arenas under their locks), so it can run after every request.

No library exposes ``mallinfo2`` (psutil reports RSS/USS only), hence this thin ctypes binding.
It is probed once: if the symbol is missing (musl, macOS, glibc < 2.33), the call fails, or a
40 MiB test allocation does not move it (jemalloc or tcmalloc preloaded), the counter is
unavailable and ``reason`` says why; the guard then falls back to the census as its signal.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_PROBE_BYTES = 40 << 20


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33, malloc.h: ten size_t fields, in this order.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL:
    # The process's own symbols (dlopen(NULL)), which include the C library it runs on; a
    # find_library("c") would spawn ldconfig (~25 ms) to find the same thing.
    return ctypes.CDLL(None)


def _bind_mallinfo2() -> Callable[[], _MallInfo2]:
    function = _libc().mallinfo2  # AttributeError where glibc is older or absent
    function.restype = _MallInfo2
    function.argtypes = []
    return function


def _probe_block() -> Callable[[], None]:
    """A 40 MiB ``malloc`` and its ``free``: malloc serves it with mmap and touches no page,
    so the probe costs microseconds (a zeroed Python buffer would cost tens of ms)."""
    libc = _libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(_PROBE_BYTES)

    def release() -> None:
        libc.free(block)
    return release


class HeapCounter:
    """Bytes in use on the C heap. ``read()`` is the per-request path; ``None`` when unavailable.

    ``probe`` (tests) replaces the glibc binding with any zero-argument function returning the
    in-use bytes, so the fallback paths run with plain values.
    """

    def __init__(self, probe: Callable[[], int] | None = None) -> None:
        self.reason: str | None = None
        self._read: Callable[[], int] | None = None
        try:
            if probe is None:
                mallinfo2 = _bind_mallinfo2()

                def probe() -> int:
                    info = mallinfo2()
                    return int(info.uordblks) + int(info.hblkhd)
            self._check(probe)
        except (OSError, AttributeError) as exc:
            self.reason = f"glibc mallinfo2() is not available here ({exc})"
        except Exception as exc:  # a probe must never stop the guard from starting
            self.reason = f"glibc mallinfo2() failed ({type(exc).__name__}: {exc})"

    def _check(self, probe: Callable[[], int]) -> None:
        before = probe()
        release = _probe_block()
        during = probe()
        release()
        # Another thread may allocate or free meanwhile; a 40 MiB block moves the counter by
        # at least 40 MiB either way, which no background noise makes up.
        if during - before < _PROBE_BYTES * 3 // 4:
            self.reason = (f"the heap counter did not move for a {_PROBE_BYTES >> 20} MiB "
                           f"allocation (another allocator, e.g. jemalloc or tcmalloc, is in use)")
            return
        self._read = probe

    @property
    def available(self) -> bool:
        """Whether ``read`` returns bytes (else see ``reason``)."""
        return self._read is not None

    def read(self) -> int | None:
        """In-use bytes of the C heap now (hot path); ``None`` when unavailable or failing."""
        if self._read is None:
            return None
        try:
            return self._read()
        except Exception as exc:  # never an exception in a request: fall back, say why
            self._read = None
            self.reason = f"glibc mallinfo2() failed ({type(exc).__name__}: {exc})"
            return None
