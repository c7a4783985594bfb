"""The Guard: wrap each request or training step, get a leak verdict at any time.

Per-step cost is a clock read, a lock and a counter; memory is read only every ``k`` steps, with
``k`` chosen from the measured cost of a read and the measured length of a step so the guard stays
inside its overhead budget (1% by default). ``check`` runs with ``overhead_budget=None``: it reads
after every step, because its job is a verdict in as few requests as possible.
"""

from __future__ import annotations

import functools
import gc
import inspect
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import Verdict, decide
from vramguard.guard_diagnosis import GuardDiagnosis, build_report
from vramguard.readers.census import Census, TensorGroup, diff_groups
from vramguard.readers.device import Device, resolve_device
from vramguard.readers.sampler import Sampler

if TYPE_CHECKING:
    from vramguard.oom import OomWatch
    from vramguard.report import Report

_log = logging.getLogger("vramguard")
F = TypeVar("F", bound=Callable[..., Any])
_CLIMB_BYTES = 8 << 20


class _SampleBuffer:
    """Bounded history: when full, keep every other sample and accept new ones half as often.

    A guard runs for weeks; this keeps the whole run in view at decreasing resolution, in
    ``capacity`` samples at most.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(16, capacity)
        self.samples: list[Sample] = []
        self.min_gap = 1

    def add(self, sample: Sample) -> None:
        too_close = bool(self.samples) and sample.request - self.samples[-1].request < self.min_gap
        if too_close and sample.allocated is None:
            return  # thinned away; census samples are rare, so those are always kept
        self.samples.append(sample)
        if len(self.samples) >= self.capacity:
            self.samples = self.samples[::2]
            self.min_gap *= 2


class Guard:
    """Tracks memory per request/step and gives a leak verdict. Thread-safe; bounded memory.

    ``device``: "auto", "cpu", "cuda", "cuda:1", ... ``overhead_budget``: the share of step time the
    guard may spend reading memory (``None``: read after every step). ``warmup``: requests ignored
    by the verdict (``None``: automatic). ``census_every``: take the live-tensor census every N
    steps instead of as often as the budget allows. ``clock`` and ``sampler`` (what reads memory) are
    injectable for tests and custom readers.
    ``oom_report``: a file to write the OOM post-mortem to when an out-of-memory error leaves a
    step (and, on CUDA, when the allocator runs out anywhere); see :mod:`vramguard.oom`.
    ``diagnose``: "auto" runs the next ``diagnose_steps`` steps after the first leak verdict under
    the allocation-site tracker, so :meth:`report` can name site, root and fix; "never": no
    window. ``unit``: what one step is called in reports ("step" for training, "request").
    """

    def __init__(
        self,
        device: str = "auto",
        *,
        overhead_budget: float | None = 0.01,
        warmup: int | None = None,
        max_samples: int = 512,
        census_every: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        oom_report: str | os.PathLike[str] | None = None,
        sampler: Sampler | None = None,
        diagnose: str = "auto",
        diagnose_steps: int = 30,
        unit: str = "step",
    ) -> None:
        if overhead_budget is not None and not 0 < overhead_budget < 1:
            raise ValueError(f"overhead_budget must be between 0 and 1, got {overhead_budget!r}")
        self.device: Device = resolve_device(device)
        self._sampler = sampler or Sampler(self.device)
        self._budget = overhead_budget
        if census_every is not None and census_every < 1:
            raise ValueError(f"census_every must be a positive number of steps, got {census_every!r}")
        self._census_every = census_every
        self._warmup = warmup
        self._clock = clock
        self._lock = threading.Lock()
        self._buffer = _SampleBuffer(max_samples)
        self._counter = itertools.count(1)
        self._step_time = 0.0  # EWMA of one step's duration, seconds
        self._read_cost = 0.0  # EWMA of one cheap read
        self._census_cost = 0.0
        self._busy_s = 0.0  # total time spent inside steps
        self._spent_s = 0.0  # total time the guard itself spent reading memory
        # With a budget, the first read waits until the step time is known (16 steps), so the
        # first census does not land on a guess; without one (check), read from the first step.
        self._next_read = self._next_census = 1 if overhead_budget is None else 16
        self._sampling = False
        self._failed = False
        self._used_at_census: int | None = None
        self._first_census: Census | None = None
        self._baseline: Census | None = None
        self._latest: Census | None = None
        self._verdict: Verdict | None = None
        self._verdict_key: tuple[int, int] = (-1, -1)
        # -- issue 10 (h10): the Guard explains itself; logic in vramguard.guard_diagnosis --------
        if diagnose not in ("auto", "never"):
            raise ValueError(f"diagnose must be 'auto' or 'never', got {diagnose!r}")
        if unit not in ("step", "request"):
            raise ValueError(f"unit must be 'step' or 'request', got {unit!r}")
        self.unit = unit
        self._diagnosis = GuardDiagnosis(diagnose_steps) if diagnose == "auto" else None
        # -- end issue 10 ----------------------------------------------------------------------
        self._oom: OomWatch | None = None
        if oom_report is not None:
            from vramguard.oom import on_oom

            self._oom = on_oom(oom_report, guard=self)

    # -- the hot path ---------------------------------------------------------------------------
    def step(self) -> _Step:
        """Context manager for one request or step (hot path: see ``bench/guard_overhead.py``)."""
        return _Step(self)

    def track(self, fn: F) -> F:
        """Decorator: each call of ``fn`` (sync or async) is one step."""
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                tracking = self._diagnosis and self._diagnosis.enter()  # issue 10: window
                started = self._clock()
                try:
                    return await fn(*args, **kwargs)
                except BaseException as exc:  # free when nothing is raised (3.11 zero-cost)
                    self._step_failed(exc)
                    raise
                finally:
                    if tracking:
                        self._diagnosis.leave(tracking)  # type: ignore[union-attr]
                    self._end_step(started)
            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracking = self._diagnosis and self._diagnosis.enter()  # issue 10: window
            started = self._clock()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:  # free when nothing is raised (3.11 zero-cost)
                self._step_failed(exc)
                raise
            finally:
                if tracking:
                    self._diagnosis.leave(tracking)  # type: ignore[union-attr]
                self._end_step(started)
        return cast(F, wrapper)

    def _end_step(self, started: float) -> None:
        # Hot path, no lock: next() on itertools.count is atomic under the GIL, and the timing
        # statistics tolerate a lost update between threads. The lock is taken only when a read
        # is due, to elect the one thread that reads.
        now = self._clock()
        request = next(self._counter)
        elapsed = now - started
        self._busy_s += elapsed
        self._step_time += (elapsed - self._step_time) * (0.05 if request > 1 else 1.0)
        if request < self._next_read or self._sampling or self._failed:
            return
        with self._lock:
            if self._sampling:
                return
            self._sampling = True
        self._sample(request - 1, now)

    def _step_failed(self, error: BaseException) -> None:
        """A step raised: write the OOM post-mortem if asked and it is an OOM. Never raises."""
        if self._oom is not None:
            from vramguard.oom import is_out_of_memory

            if is_out_of_memory(error):
                self._oom.write(source="exception", error=error)

    # -- reading --------------------------------------------------------------------------------
    def _sample(self, request: int, now: float) -> None:
        began = time.perf_counter()
        try:
            census = None
            if request + 1 >= self._next_census:
                # Routine censuses count bytes only; the tensor diff needs grouped ones, which
                # are taken for its baseline here and for its other end in growing_tensors().
                census = self._sampler.census(groups=self._needs_baseline(request))
                self._census_cost = _ewma(self._census_cost, census.duration_s)
            started = time.perf_counter()
            sample = self._sampler.read(request, now, census)
            self._read_cost = _ewma(self._read_cost, time.perf_counter() - started)
            with self._lock:
                self._buffer.add(sample)
                if census is not None:
                    self._keep_census(census, request)
                    self._used_at_census = sample.device_used
                    self._next_census = request + 1 + (
                        self._census_every or self._period(self._census_cost, share=0.35))
                elif self._climbing(sample.device_used) and self._census_every is None:
                    self._next_census = request + 1  # a cheap signal climbs: look closer now
                self._next_read = request + 1 + self._period(self._read_cost, share=0.35)
        except Exception:  # the guard must never break the service it watches
            self._failed = True
            _log.warning("vramguard: reading memory failed; the guard stops sampling", exc_info=True)
        finally:
            self._spent_s += time.perf_counter() - began
            self._sampling = False

    def _climbing(self, used: int | None) -> bool:
        # RSS (CPU) or driver-level use (CUDA) is read every few steps for almost nothing; when it
        # has climbed 8 MiB (or 5%) above its level at the last census, the next read takes a
        # census early instead of waiting out the budget's period. Each trigger resets the
        # level, so this costs at most one census per 8 MiB of new high-water mark.
        if used is None or self._used_at_census is None:
            return False
        return used - self._used_at_census > max(_CLIMB_BYTES, self._used_at_census // 20)

    def _period(self, cost: float, *, share: float) -> int:
        # The budget is split: 35% for the cheap reads, 35% for the census, and the rest is
        # headroom for the fixed cost of a step (~1-2 us) and for cost estimates that lag.
        if self._budget is None:
            return 1
        allowed = self._budget * share * max(self._step_time, 1e-7)
        return max(1, math.ceil(cost / allowed))

    def _needs_baseline(self, request: int) -> bool:
        warmup = self._warmup if self._warmup is not None else 0
        return self._first_census is None or (self._baseline is None and request >= warmup)

    def _keep_census(self, census: Census, request: int) -> None:
        warmup = self._warmup if self._warmup is not None else 0
        if not census.grouped:
            return  # a bytes-only census: it fed the sample, the diff cannot use it
        if self._first_census is None:
            self._first_census = census
        if self._baseline is None and request >= warmup:
            self._baseline = census
        self._latest = census

    def live_bytes_after_collection(self) -> int | None:
        """Run a full ``gc.collect()`` and read the live bytes (census on CPU, allocator on
        accelerators). Costly (a full collection): for reports, never per request."""
        gc.collect()
        if self.device.is_cpu:
            return self._sampler.census(groups=False).total_bytes
        return self._sampler.read(self.requests, self._clock()).allocated

    # -- results --------------------------------------------------------------------------------
    @property
    def requests(self) -> int:
        """Steps completed so far."""
        # count's repr is its next value; reading it does not advance it (and needs no lock).
        return int(repr(self._counter)[6:-1]) - 1

    @property
    def overhead(self) -> float:
        """The guard's own reading time as a share of the time spent in steps (0.004 = 0.4%)."""
        return self._spent_s / self._busy_s if self._busy_s > 0 else 0.0

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The bounded sample history, oldest first."""
        with self._lock:
            return tuple(self._buffer.samples)

    def verdict(self) -> Verdict:
        """The current verdict: cached, and recomputed only when new samples arrived since the
        last call (3-7 ms at the full 512 samples, so a health check may call it freely)."""
        with self._lock:
            samples = tuple(self._buffer.samples)
            key = (len(samples), samples[-1].request if samples else -1)
            if self._verdict is not None and key == self._verdict_key:
                return self._verdict
        verdict = decide(samples, warmup=self._warmup)
        with self._lock:
            self._verdict, self._verdict_key = verdict, key
        if verdict.is_leak and self._diagnosis is not None:  # issue 10: open the window once
            self._diagnosis.saw_leak(self)
        return verdict

    def report(self, target: str = "Guard", *, wait_s: float | None = 60.0) -> Report:
        """The verdict explained: a :class:`vramguard.Report` (``str()`` it, ``to_dict()``,
        ``to_html(path)``). After a leak it waits (``wait_s`` at most) for the diagnosis window's
        analysis; costs a census on a leak, so call it for a report, never per step."""
        return build_report(self, target, wait_s)  # issue 10: vramguard.guard_diagnosis

    def growing_tensors(self, limit: int = 5) -> list[tuple[TensorGroup, int, int]]:
        """Tensor groups that grew between the first census after warm-up and now.

        Takes a fresh grouped census (milliseconds): call it for a report, not per request.
        """
        with self._lock:
            before = self._baseline or self._first_census
        if before is None:
            return []
        after = self._sampler.census(groups=True)
        with self._lock:
            self._latest = after
        device = str(self.device) if not self.device.is_cpu else "cpu"
        grown = [g for g in diff_groups(before, after) if g[0].device == device and g[2] > 0]
        return grown[:limit]


class _Step:
    __slots__ = ("_guard", "_started", "_tracking")

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._started = 0.0
        self._tracking: Any = None

    def __enter__(self) -> _Step:
        diagnosis = self._guard._diagnosis  # issue 10: the diagnosis window tracks sites
        self._tracking = diagnosis and diagnosis.enter()
        self._started = self._guard._clock()
        return self

    def __exit__(self, exc_type: object, error: BaseException | None, tb: object) -> None:
        if self._tracking:  # issue 10: leave the diagnosis window's tracker first
            self._guard._diagnosis.leave(self._tracking)  # type: ignore[union-attr]
        if error is not None:  # the one test the error-free path pays
            self._guard._step_failed(error)
        self._guard._end_step(self._started)


def _ewma(old: float, new: float) -> float:
    # Machine noise only ever adds time, so a cheaper measurement is believed at once and a
    # dearer one only gradually: the estimate tracks the real cost, not the worst moments.
    if old == 0.0 or new < old:
        return new
    return old + (new - old) * 0.2
