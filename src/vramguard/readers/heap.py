"""The native heap in use, from glibc's ``mallinfo2()``: the CPU analogue of CUDA's allocator counters.

PyTorch allocates CPU tensor storage with ``posix_memalign``, so the C heap's in-use bytes
(``uordblks``, small and medium blocks, plus ``hblkhd``, the blocks malloc served with ``mmap``)
rise by exactly a tensor's size when it is made and fall back when it is freed. They also count
what an autograd graph keeps outside tensor storage (its nodes), which a census of Python-visible
tensors cannot see, and, unlike RSS, they fall when memory is freed. One read costs ~0.3-3 us
through ctypes on a compact heap, but glibc counts the free chunks one by one (every bin of every
arena, under its lock): 8 ms with 100,000 free chunks, and 155-360 us on a leaking CPU DDP rank
whose heap had fragmented (measured). The guard's budget prices each read at its measured cost,
so a fragmented heap gets sparser reads, not a slower service.

No library exposes ``mallinfo2`` (psutil reports RSS/USS only), hence this thin ctypes binding.
It is probed once: if the symbol is missing (musl, macOS, glibc < 2.33), the call fails, or a
40 MiB test allocation does not move it (jemalloc or tcmalloc preloaded), the counter is
unavailable and ``reason`` says why; the guard then falls back to the census as its signal.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Callable

_PROBE_BYTES = 40 << 20

WINDOW_FLOOR_BYTES = 16 << 10
"""The least growth of the counter over a verdict's window that can count as a leak. Unlike the
allocator's counters, the C heap also moves with Python's and the libraries' own allocations (a
list or dict resized, an interned string, a cache filled): tens of KiB over a window on a clean
service. Every judge of a heap series (the guard, a route, ``loadtest``) applies this one floor,
which the sampler owns and the status shows as ``memory.floor_bytes``."""

RATE_FLOOR_BYTES = 256
"""The least growth per step of the recent half of a verdict's window that can count as a leak
(with ``WINDOW_FLOOR_BYTES`` over the whole window). A clean Lightning DDP rank's heap drifts by
40-150 B per step over hundreds of steps, and by up to ~190 B on a busy machine (measured), which
a long window would otherwise sum past 16 KiB. The smallest thing a step can keep with a tensor
costs more: a kept 0-dim or 1-element CPU tensor is 390-580 B of C heap (measured over 2,000 of
them), a retained graph several KiB. Judged on the recent half, not the window's average, so a
leak that began late in the window is not diluted by its flat start. Growth under it is
"inconclusive", never "no leak"."""

REQUEST_FLOOR_BYTES = 1 << 10
"""The least bytes per request, between the reads just before and just after one request, that
can count as that request's leak: the server's own per-request bookkeeping (a log record, a
connection's buffers) moves the counter by 60-300 B on a clean FastAPI route (measured)."""


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


def _malloc_free() -> ctypes.CDLL:
    """The C library with ``malloc`` and ``free`` typed for ctypes (pointers, not ints)."""
    libc = _libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _probe_block() -> Callable[[], None]:
    """A 40 MiB ``malloc`` and its ``free``: malloc serves it with mmap and touches no page,
    so the probe costs microseconds (a zeroed Python buffer would cost tens of ms)."""
    libc = _malloc_free()
    block = libc.malloc(_PROBE_BYTES)

    def release() -> None:
        libc.free(block)
    return release


# glibc's per-thread cache of freed small chunks (tcache): 64 bins, chunk sizes 32..1040 B (one
# request size per bin here), 7 chunks per bin unless GLIBC_TUNABLES sets tcache_count.
_TCACHE_REQUESTS = range(24, 1033, 16)
_TCACHE_COUNT = 7
_thread_primed = threading.local()
# Which threads are filled: the main thread (a training loop, `check`, the pytest marker, an
# ASGI server's event loop) and vramguard's own worker, at their first read or verdict. Not
# other threads: one that lives for a request or two (a thread-per-connection server such as
# Werkzeug's HTTP/1.0 dev server makes one per request) hands its tcache back only as it exits,
# after Python's join() returned, which left 40-320 KiB of noise in the reads around those exits
# (measured over 200 such threads; Flask's e2e test then read its clean route as a leak). And
# not later than the first use: filled at a thread's 32nd use instead, the one-off +220 KiB
# landed inside short runs' windows (9 suite failures: leaks read as no_leak).


def prime_thread_cache(*, long_lived: bool = False) -> None:
    """Fill this thread's glibc tcache, once, in the main thread and vramguard's own worker
    (~0.5 ms; up to ~230 KiB it keeps).

    ``mallinfo2`` counts the chunks a thread's tcache keeps as in use. A thread's tcache fills
    as it frees chunks of new sizes, and the guard's own analysis frees lists sized by the
    growing sample count (``Guard.samples``: 8 B a sample, 512-1,032 B from ~64 to ~128
    samples): a fresh process that asked for the verdict after every step grew the counter by
    ~150 KiB from step 60 to 130, then stopped (measured), and read as a leak at ~100 of its
    first 400 checks. Filled now, the thread's later frees of those sizes go back to malloc's
    bins (free: not counted), and its mallocs take chunks from the tcache, which the count
    already includes: the series stays flat (measured: flat from the priming on). It has to
    happen in the thread that judges, after its first work (a torch model's first steps drain
    the bins again: priming at import did not help), hence where it is called: the thread's
    first heap read or verdict (which threads: see the comment above). The cost to
    a real leak: its first 7 chunks of each size are not seen; a leak is unbounded, that lag
    is not. With a larger ``tcache_count`` tunable the cache is only partly filled
    (harmless). ``long_lived``: the caller knows this thread lives on (vramguard's own
    worker): filled whatever thread it is."""
    if getattr(_thread_primed, "done", False):
        return
    _thread_primed.done = True
    if not long_lived and threading.current_thread() is not threading.main_thread():
        return
    try:
        libc = _malloc_free()
        # All allocated first, then all freed: interleaved, each free would hand back the
        # chunk the next malloc of its size takes, and fill one chunk per bin.
        blocks = [libc.malloc(size) for size in _TCACHE_REQUESTS for _ in range(_TCACHE_COUNT)]
        for block in blocks:
            if block:
                libc.free(block)
    except (OSError, AttributeError):  # not glibc: there is no tcache to fill
        return


# Request sizes for filling the heap's holes, largest first, ~1.2x apart from the tcache's
# largest (1,032 B) down to the least chunk (24 B asks for a 32 B chunk): a hole ends up taken
# by the largest request it fits, and what is left of it (under a fifth) by the smaller ones.
_FILL_REQUESTS = sorted({int(24 * 1.2 ** k) // 16 * 16 + 8 for k in range(40)
                         if 24 * 1.2 ** k < 1032}, reverse=True)
_FILL_AT = 256              # free chunks (all arenas) new since the last filling: fill ...
_FILL_RENT = 8              # ... once the readings since walked them this many times over
_FILL_CHECK = 64            # blocks between two reads that check the filling (see _take)
_CHUNK_HEADER = 16          # a block's address less its chunk's (64-bit glibc)
_FILL_MAX_BYTES = 1 << 20   # one filling takes at most this much ...
_FILL_MAX_TOTAL = 64 << 20  # ... and all of a process's fillings together


class _Holes:
    """The main heap's free chunks (its holes), taken with blocks kept for good, and the bytes
    they hold, which every heap reading leaves out. One per process: the heap is the process's.

    Why: ``mallinfo2`` counts the free chunks one by one, and cold (after a request's or a
    step's work evicted them from the caches) each one costs a memory access. A process with
    torch, scipy and vramguard imported has 300-900 of them and a cold read costs 50-140 us of
    CPU, 5-25 us once they are taken; a leak interleaves kept tensors with freed temporaries
    and adds about one a request (bench/web_routes.py's app: ~2,400 after 2,000 requests, a
    read 0.36 ms). That cost is what the budget prices, so it is how rarely the guard can look
    (BENCHMARKS.md, "Filling the heap's holes").
    No allocator API compacts glibc's heap, hence this.

    When: inside a reading in the main thread that finds ``_FILL_AT`` more free chunks (all
    arenas) than the last filling left, once the readings have walked them long enough to pay
    for it (``due``). How: each size up to 1 KiB, largest first, is asked for with
    ``calloc`` (which bypasses the thread's tcache, so it stays as primed) until glibc carves
    it from the top of the heap, or from what is left of a hole larger than every size (see
    ``_take``). What it took is the in-use bytes' change across it, read in the same thread
    under the lock that every reading takes, so the readings stay the service's own bytes.
    Holes in other threads' arenas (a threadpool's) are not taken. The cost: the holes' bytes
    (tens to hundreds of bytes each), kept for the process's life, at most ``_FILL_MAX_TOTAL``
    in all, and ~1 us a hole (~1 ms for 900), which the readers pay from their budget but leave
    out of a read's price (``fill_seconds``): a filling is rare, and the reads after it are
    the cheaper for it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0           # bytes the kept blocks hold: left out of every reading
        self.spent_s = 0.0       # CPU time the fillings took, in all
        self._base = 0           # free chunks the last filling left (0: none yet)
        self._walked = 0         # free chunks beyond those that the readings since walked
        self._fill: Callable[[_MallInfo2], None] | None = None
        try:
            mallinfo2, libc = _bind_mallinfo2(), _malloc_free()
            libc.calloc.restype = ctypes.c_void_p
            libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
            libc.sbrk.restype = ctypes.c_void_p
            libc.sbrk.argtypes = [ctypes.c_ssize_t]
            self._mallinfo2, self._libc = mallinfo2, libc
        except (OSError, AttributeError):  # not glibc: nothing to fill
            return
        self._fill = self._take

    def due(self, info: _MallInfo2) -> bool:
        """Whether a reading's free chunks call for a filling now (under ``lock``).

        When at least ``_FILL_AT`` chunks are new since the last filling, and the readings
        since have walked them often enough to have paid for taking them: a chunk costs ~1 us
        to take and 0.1-0.25 us a cold read to walk (measured), so a filling waits until the
        readings walked the new chunks ``_FILL_RENT`` times over (rent, then buy). Where reads
        are frequent that is at once; where the budget affords few (a leaking server of
        sub-millisecond requests), fillings do not eat the budget their reads would have had.
        """
        new = info.ordblks + info.smblks - self._base
        if new <= 0:
            return False
        self._walked += new
        return (new >= _FILL_AT and self._walked >= _FILL_RENT * new
                and self._fill is not None and self.taken < _FILL_MAX_TOTAL
                and threading.current_thread() is threading.main_thread())

    def fill(self, info: _MallInfo2) -> None:
        """Take the holes, ``info`` being the reading just taken (under ``lock``); never raises."""
        if self._fill is None:
            return
        started = time.thread_time()
        try:
            self._fill(info)
        except Exception:  # a nicety: never a reason for a reading to fail
            self._fill = None
        self.spent_s += time.thread_time() - started

    def _take(self, before: _MallInfo2) -> None:
        # Whether a block came from the top is told by its address, not by a read per block:
        # with hundreds of holes, a read after each block walked all that were left (5.5 ms for
        # 880 holes, measured) where this takes ~1 ms. glibc carves a block from the top at the
        # top chunk's start, and the main heap's top ends at the program break: its start is
        # the break less its size (``keepcost``). A read every ``_FILL_CHECK`` blocks checks it
        # (a main heap that is not contiguous, or mmap serving small blocks, stops the filling
        # for good). A block right after the one before it was carved from what was left of
        # the same hole: one larger than every size asked, where the service's own working
        # memory is (a DDP rank's 32-64 KiB gradients between steps); taking those moved the
        # rank's temporaries to the top of the heap (4.5-5.5 MB taken a rank, 3x the page
        # faults, measured), so a size ends there, and no size asked is over 1 KiB. A large
        # hole is one chunk to walk: the small ones are what costs.
        mallinfo2, libc = self._mallinfo2, self._libc
        budget = min(_FILL_MAX_BYTES, _FILL_MAX_TOTAL - self.taken)
        top = int(libc.sbrk(0)) - int(before.keepcost)
        last, blocks = before, 0
        for size in _FILL_REQUESTS:
            chunk, previous = size + 8, 0  # the chunk: the size asked (16n + 8) and its header
            while last.uordblks - before.uordblks < budget:
                # calloc bypasses the thread's tcache, which stays as primed
                block = libc.calloc(1, size)
                if not block:
                    break
                if block - _CHUNK_HEADER == top:  # from the top: no hole of this size left
                    top += chunk  # kept: freed, it would go to the tcache or a fastbin
                    break
                if block == previous + chunk:  # splitting a large hole
                    break
                previous = block
                blocks += 1
                if blocks % _FILL_CHECK == 1:
                    info = mallinfo2()
                    if (info.hblkhd != last.hblkhd
                            or int(libc.sbrk(0)) - int(info.keepcost) != top):
                        self._fill = None  # the address test does not hold here
                        break
                    last = info
            if self._fill is None:
                break
        last = mallinfo2()
        self.taken += max(0, int(last.uordblks) - int(before.uordblks))
        self._base, self._walked = last.ordblks + last.smblks, 0


_holes = _Holes()


def filled_bytes() -> int:
    """Bytes this process's heap fillings keep (see ``_Holes``; the status's
    ``signal.heap_filled_bytes``): the guard's own memory, left out of every reading."""
    return _holes.taken


def fill_seconds() -> float:
    """CPU seconds this process's heap fillings took so far (see ``_Holes``): a reader that
    times its read takes them out of the read's price (a filling is rare, and makes the reads
    after it cheaper), but still pays them from its budget."""
    return _holes.spent_s


_NUMPY_SMALL_BUFFER = 1024  # numpy's alloc.c: data buffers under this many bytes are cached
_NUMPY_CACHED_PER_SIZE = 7   # ... up to this many per byte size (NCACHE)


@functools.cache  # once per process
def prime_numpy_cache() -> None:
    """Fill numpy's cache of small freed data buffers, once per process (~3.6 MiB, ~5 ms).

    numpy keeps up to 7 freed data buffers of each byte size under 1 KiB for reuse, allocated
    with malloc, so the heap counter counts them as in use. Every array of a new small size
    leaves its buffers there for good: vramguard's own analysis, whose arrays are sized by the
    growing sample count, then grew the counter by 100-1,000 B per verdict over its first few
    hundred samples (measured: ``scipy.stats.theilslopes``/``siegelslopes`` on series of 20 to
    500 points), a warm-up of the guard's own making that short runs read as a leak. Filled at
    start, before any baseline, the cache no longer grows (measured: 0 B per verdict after).
    The user's own numpy warm-up benefits the same way. If numpy's cache changes, this costs a
    few MiB once and nothing else."""
    try:
        import numpy as np
    except ImportError:  # the monitor and supervisor run without numpy's users
        return
    # Exactly as many buffers per size as the cache keeps, so that freeing them frees nothing
    # to malloc; 0-d arrays of a void dtype, because a 1-d array's shape also takes a small
    # malloc, and thousands of those freed between the cached buffers left holes that every
    # mallinfo2() walks (measured: 0.5 -> 20-260 us a read). The list is sized once for the
    # same reason.
    buffers: list[object] = [None] * (_NUMPY_CACHED_PER_SIZE * (_NUMPY_SMALL_BUFFER - 1))
    try:
        index = 0
        for size in range(1, _NUMPY_SMALL_BUFFER):
            dtype = np.dtype(("V", size))
            for _ in range(_NUMPY_CACHED_PER_SIZE):
                buffers[index] = np.empty((), dtype=dtype)
                index += 1
    except MemoryError:  # a nicety: never a reason for the guard not to start
        pass
    del buffers


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
                mallinfo2, holes = _bind_mallinfo2(), _holes

                def probe() -> int:
                    with holes.lock:
                        info = mallinfo2()
                        value = int(info.uordblks) + int(info.hblkhd) - holes.taken
                        if holes.due(info):  # after the value: the filling is not in it
                            holes.fill(info)
                    return value
            self._check(probe)
        except (OSError, AttributeError) as exc:
            self.reason = f"glibc mallinfo2() is not available here ({exc})"
        except Exception as exc:  # a probe must never stop the guard from starting
            self.reason = f"glibc mallinfo2() failed ({type(exc).__name__}: {exc})"
        if self._read is not None:
            prime_numpy_cache()

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
        prime_thread_cache()  # before the read: the priming's own jump precedes the sample
        try:
            return self._read()
        except Exception as exc:  # never an exception in a request: fall back, say why
            self._read = None
            self.reason = f"glibc mallinfo2() failed ({type(exc).__name__}: {exc})"
            return None
