"""Memory series for the verdict's scenarios: what allocated/reserved/... look like per request.

Shared by ``tests/unit/test_verdict*.py`` and ``bench/verdict_scenarios.py``. Each scenario is a
pure function of a seed and a request count, returning plain :class:`Sample` values; ``expected``
is the verdict it must get. Sizes mimic a small inference service on a 16 GiB GPU: 200 MiB of
weights, a few KiB to MiB per request, 20 KiB of noise from allocator rounding and batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import VerdictKind

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BASE = 200 * MIB
NOISE = 20 * KIB
TOTAL = 16 * GIB
CONTEXT = 400 * MIB  # CUDA context and libraries: device used beyond reserved, constant
SECONDS_PER_REQUEST = 0.05


def samples_from(
    allocated: np.ndarray,
    *,
    rng: np.random.Generator,
    reserved: np.ndarray | None = None,
    outside: np.ndarray | None = None,
    inactive_split: np.ndarray | None = None,
) -> list[Sample]:
    """Wrap an allocated series into samples with plausible other counters.

    Reserved defaults to allocated rounded up to 2 MiB segments plus a constant pool, so it
    follows allocated like the caching allocator does; device used = reserved + ``outside``.
    """
    n = allocated.size
    alloc = np.maximum(allocated, 0).astype(np.int64)
    if reserved is None:
        reserved = (np.ceil(alloc / (2 * MIB)) * 2 * MIB + 64 * MIB).astype(np.int64)
    if outside is None:
        outside = np.full(n, CONTEXT)
    if inactive_split is None:
        inactive_split = rng.integers(0, 2 * MIB, n)
    used = reserved + outside
    times = np.cumsum(rng.uniform(0.5, 1.5, n) * SECONDS_PER_REQUEST)
    return [
        Sample(
            request=i,
            time=float(times[i]),
            allocated=int(alloc[i]),
            reserved=int(reserved[i]),
            inactive_split=int(inactive_split[i]),
            alloc_retries=0,
            device_used=int(used[i]),
            device_total=TOTAL,
        )
        for i in range(n)
    ]


def _noise(rng: np.random.Generator, n: int, sigma: float = NOISE) -> np.ndarray:
    return rng.normal(0.0, sigma, n)


# --- must read as no_leak ------------------------------------------------------------------------

def warmup_step(seed: int, n: int) -> list[Sample]:
    """Optimizer state created on step 1 and lazy buffers in the first few requests, then flat."""
    rng = np.random.default_rng(seed)
    y = BASE + _noise(rng, n)
    y[1:] += 300 * MIB  # optimizer state
    for start in rng.integers(2, 10, 3):
        y[start:] += rng.integers(1, 8) * MIB  # lazy buffers (workspaces, caches of kernels)
    return samples_from(y, rng=rng)


def lru_plateau(seed: int, n: int) -> list[Sample]:
    """An LRU cache of C entries that fills in the first ~third of the run, then stays full."""
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(n // 5, n // 3 + 1))
    entry = int(rng.integers(16, 128)) * KIB
    entries = np.minimum(np.arange(1, n + 1), capacity)
    return samples_from(BASE + entries * entry + _noise(rng, n), rng=rng)


def deque_maxlen(seed: int, n: int) -> list[Sample]:
    """``deque(maxlen=M)`` of recent outputs (M up to a third of the run) with variable sizes."""
    rng = np.random.default_rng(seed)
    maxlen = int(rng.integers(10, n // 3 + 1))
    sizes = rng.integers(32, 96, n) * KIB
    held = np.array([sizes[max(0, i - maxlen + 1) : i + 1].sum() for i in range(n)])
    return samples_from(BASE + held + _noise(rng, n), rng=rng)


def coupon_dict(seed: int, n: int) -> list[Sample]:
    """A dict keyed by random keys from a bounded set of K keys: grows fast, then ever slower
    as the key set saturates (coupon collector), ~95% full by the end of the run."""
    rng = np.random.default_rng(seed)
    keys = int(rng.integers(n // 6, n // 3 + 1))
    entry = int(rng.integers(16, 128)) * KIB
    seen = np.zeros(keys, dtype=bool)
    count = np.empty(n)
    for i, key in enumerate(rng.integers(0, keys, n)):
        seen[key] = True
        count[i] = seen.sum()
    return samples_from(BASE + count * entry + _noise(rng, n), rng=rng)


def sawtooth_flush(seed: int, n: int) -> list[Sample]:
    """A buffer that grows every request and is flushed every P requests (P in 5..60)."""
    rng = np.random.default_rng(seed)
    period = int(rng.integers(5, 61))
    per_request = int(rng.integers(64, 512)) * KIB
    phase = int(rng.integers(0, period))
    y = BASE + ((np.arange(n) + phase) % period) * per_request + _noise(rng, n)
    return samples_from(y, rng=rng)


def variable_batch(seed: int, n: int) -> list[Sample]:
    """Memory after each request depends on its batch size: heavy-tailed, positive noise."""
    rng = np.random.default_rng(seed)
    batch = rng.pareto(1.5, n) * 4 * MIB  # mostly small, sometimes huge
    return samples_from(BASE + batch + _noise(rng, n), rng=rng)


def gc_cycles(seed: int, n: int) -> list[Sample]:
    """Reference cycles pile up until the garbage collector frees them at irregular times."""
    rng = np.random.default_rng(seed)
    garbage = rng.integers(32, 256, n) * KIB
    y = np.empty(n)
    pending = 0.0
    next_collect = int(rng.integers(5, 61))
    for i in range(n):
        pending += garbage[i]
        if i == next_collect:
            pending = 0.0
            next_collect = i + int(rng.integers(5, 61))
        y[i] = BASE + pending
    return samples_from(y + _noise(rng, n), rng=rng)


# --- must read as leak ---------------------------------------------------------------------------

def small_leak(seed: int, n: int) -> list[Sample]:
    """+1 KiB per request under 20 KiB of Gaussian noise (plus a warm-up step)."""
    rng = np.random.default_rng(seed)
    y = BASE + 1 * KIB * np.arange(n) + _noise(rng, n)
    y[1:] += 100 * MIB
    return samples_from(y, rng=rng)


def every_nth_leak(seed: int, n: int) -> list[Sample]:
    """Every N-th request (N in 5..20) keeps 64 KiB, e.g. a debug list appended on a condition."""
    rng = np.random.default_rng(seed)
    every = int(rng.integers(5, 21))
    kept = (np.arange(n) // every) * 64 * KIB
    return samples_from(BASE + kept + _noise(rng, n), rng=rng)


def late_leak(seed: int, n: int) -> list[Sample]:
    """Flat until 60% of the run, then +8 KiB per request (a code path that starts late)."""
    rng = np.random.default_rng(seed)
    start = int(0.6 * n)
    y = BASE + 8 * KIB * np.maximum(0, np.arange(n) - start) + _noise(rng, n)
    return samples_from(y, rng=rng)


def big_leak(seed: int, n: int) -> list[Sample]:
    """Outputs kept with their autograd graph: +4 MiB per request, obvious at once."""
    rng = np.random.default_rng(seed)
    y = BASE + 4 * MIB * np.arange(n) + _noise(rng, n, 256 * KIB)
    return samples_from(y, rng=rng)


def leak_with_batch_noise(seed: int, n: int) -> list[Sample]:
    """+16 KiB per request hidden under heavy-tailed batch-size noise."""
    rng = np.random.default_rng(seed)
    y = BASE + 16 * KIB * np.arange(n) + rng.pareto(1.5, n) * 1 * MIB + _noise(rng, n)
    return samples_from(y, rng=rng)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named series generator and the verdict it must get."""

    name: str
    make: Callable[[int, int], list[Sample]]
    expected: VerdictKind


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("warmup_step", warmup_step, VerdictKind.NO_LEAK),
    Scenario("lru_plateau", lru_plateau, VerdictKind.NO_LEAK),
    Scenario("deque_maxlen", deque_maxlen, VerdictKind.NO_LEAK),
    Scenario("coupon_dict", coupon_dict, VerdictKind.NO_LEAK),
    Scenario("sawtooth_flush", sawtooth_flush, VerdictKind.NO_LEAK),
    Scenario("variable_batch", variable_batch, VerdictKind.NO_LEAK),
    Scenario("gc_cycles", gc_cycles, VerdictKind.NO_LEAK),
    Scenario("small_leak", small_leak, VerdictKind.LEAK),
    Scenario("every_nth_leak", every_nth_leak, VerdictKind.LEAK),
    Scenario("late_leak", late_leak, VerdictKind.LEAK),
    Scenario("big_leak", big_leak, VerdictKind.LEAK),
    Scenario("leak_with_batch_noise", leak_with_batch_noise, VerdictKind.LEAK),
)
"""Every scenario the verdict is held to; ``SCENARIOS_BY_NAME`` for tests that pick one."""

SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


def cpu_exact(per_request: int, n: int, *, every: int = 1) -> list[Sample]:
    """A CPU census series: exact live tensor bytes (no noise) every ``every`` requests, RSS
    (device_used) every request, no reserved (no caching allocator on CPU)."""
    samples = []
    for i in range(n):
        live = BASE + per_request * i
        samples.append(
            Sample(request=i, time=i * SECONDS_PER_REQUEST,
                   allocated=live if i % every == 0 else None,
                   device_used=live + 300 * MIB, device_total=64 * GIB)
        )
    return samples
