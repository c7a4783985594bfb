"""Drive an HTTP endpoint and read the server's memory as it goes: the engine of ``loadtest``.

It sends exactly the request it is given (method, headers, body) to exactly the URL it is given,
``concurrency`` at a time, and every ``sample_every`` completed requests reads the server's memory:
from its ``/vramguard/status`` (the guard's latest sample), or NVML's per-process memory for a
pid.

Only *fresh* readings count. A server's guard measures memory every k requests and its status
repeats the last value in between; each value comes with the request and time it was read at
(``memory.read_at_request`` / ``memory.read_at``), and :class:`Freshness` keeps a value only the
first time it is seen. A repeated stale value is not a reading: counting repeats as readings is
how a leak looked flat. The kept values become :class:`~vramguard.analysis.samples.Sample`
values, at the server's own request index, for the usual verdict.

A run that is cut short (server gone, Ctrl-C) returns what it has, with ``stopped`` saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import httpx

from vramguard.analysis.floor import EXACT, Floor
from vramguard.analysis.samples import Sample
from vramguard.errors import EnvironmentProblem, NvmlError

# The memory values a status carries that map onto Sample fields (``tensor_bytes`` where this
# vramguard's Sample has it).
_SAMPLE_FIELDS = frozenset(f.name for f in fields(Sample))
MEMORY_FIELDS = tuple(name for name in ("allocated", "tensor_bytes", "reserved", "device_used",
                                        "device_total") if name in _SAMPLE_FIELDS)


@dataclass(frozen=True, slots=True)
class Value:
    """One memory value as a status showed it: ``request``/``time`` when it was read (None from a
    server that does not say, then only a change of value tells a new reading)."""

    name: str
    value: int
    request: int | None
    time: float | None


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of the server's memory, after ``completed`` requests of this load test."""

    completed: int
    values: tuple[Value, ...]
    time: float  # this process's monotonic clock, when the server tells no time of its own
    server_requests: int | None = None  # the server's own request count, when it says
    floor: Floor = EXACT  # the status's memory.floor_bytes and memory.floor_bytes_per_request


MemoryReader = Callable[[int], Awaitable[Reading]]


class Freshness:
    """Keeps each memory value the first time it is seen and builds samples from those.

    ``base``: the server's request count when the load began (None: taken from the first
    reading, else this load test's own count is the index); a value read at server request r
    becomes a sample at ``r - base`` (values read before the load are dropped). Pure: fed
    :class:`Reading` values, no I/O.
    """

    def __init__(self, base: int | None = None) -> None:
        self.base = base
        self.fresh = 0          # fresh readings of allocated memory (what the verdict needs)
        self.stale = 0          # reads whose allocated value was a repeat
        self.dated = True       # every value came with read_at_request
        self.floor = EXACT      # the widest floor the server stated
        self._last: dict[str, tuple[Any, ...]] = {}
        self._points: dict[int, dict[str, Any]] = {}

    def add(self, reading: Reading) -> bool:
        """Record a read; True when it brought a fresh allocated-memory value."""
        fresh_allocated = False
        saw_allocated = False
        self.floor = self.floor.widest(reading.floor)
        for value in reading.values:
            dated = value.request is not None
            self.dated = self.dated and dated
            key: tuple[Any, ...] = (value.request, value.time) if dated else (value.value,)
            if value.name == "allocated":
                saw_allocated = True
            if self._last.get(value.name) == key:
                continue
            self._last[value.name] = key
            index = reading.completed
            if value.request is not None and self.base is not None:
                index = value.request - self.base
            if index < 0:
                continue  # read before the load began: not evidence about it
            point = self._points.setdefault(index, {})
            point[value.name] = value.value
            point.setdefault("time", value.time if value.time is not None else reading.time)
            if value.name == "allocated":
                fresh_allocated = True
        if fresh_allocated:
            self.fresh += 1
        elif saw_allocated:
            self.stale += 1
        return fresh_allocated

    def samples(self) -> tuple[Sample, ...]:
        """The fresh values as samples, one per server request they were read at."""
        out = []
        for index in sorted(self._points):
            point = dict(self._points[index])
            moment = point.pop("time")
            out.append(Sample(request=index, time=float(moment), **point))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send and how much: ``requests`` or ``duration`` seconds (one of them).

    The body of request i is ``template`` with ``{i}`` and ``{uuid}`` filled in, else
    ``bodies[i % len(bodies)]``, else ``body``.
    """

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    concurrency: int = 1
    requests: int | None = 200
    duration: float | None = None
    sample_every: int = 1
    timeout: float = 30.0
    template: str | None = None
    bodies: tuple[bytes, ...] = ()

    def body_for(self, index: int) -> bytes | None:
        """The body of request ``index`` (0-based)."""
        if self.template is not None:
            text = self.template.replace("{i}", str(index))
            if "{uuid}" in text:
                text = text.replace("{uuid}", str(uuid.uuid4()))
            return text.encode()
        if self.bodies:
            return self.bodies[index % len(self.bodies)]
        return self.body

    def __str__(self) -> str:
        amount = f"{self.requests} requests" if self.requests else f"{self.duration:g}s"
        return f"{self.method} {self.url}: {amount}, {self.concurrency} at a time"


@dataclass(slots=True)
class LoadResult:
    """What the load test saw: requests by status, fresh memory readings, why it stopped early."""

    freshness: Freshness
    completed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    elapsed: float = 0.0
    stopped: str | None = None       # None: ran to its end; else why it was cut short
    interrupted: bool = False        # Ctrl-C (else the server or the network went away)

    @property
    def failures(self) -> dict[str, int]:
        """Non-2xx responses by status code."""
        return {code: n for code, n in self.statuses.items() if not code.startswith("2")}

    @property
    def failed(self) -> int:
        """How many responses were not 2xx."""
        return sum(self.failures.values())


def _status_error(status_url: str, message: str, *, hint: str | None = None) -> EnvironmentProblem:
    return EnvironmentProblem(f"the status endpoint {status_url} {message}", hint=hint)


def parse_status(document: Any, status_url: str, completed: int, now: float) -> Reading:
    """The memory values of a ``vramguard.status/1`` document (pure; errors are exit 3)."""
    memory = document.get("memory") if isinstance(document, Mapping) else None
    if not isinstance(memory, Mapping):
        raise _status_error(status_url, "answered JSON without a 'memory' block",
                            hint="point --status-url at the server's /vramguard/status")
    at_request = memory.get("read_at_request")
    at_time = memory.get("read_at")
    at_request = at_request if isinstance(at_request, Mapping) else {}
    at_time = at_time if isinstance(at_time, Mapping) else {}
    values = []
    for name in MEMORY_FIELDS:
        value = memory.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            request = at_request.get(name)
            moment = at_time.get(name)
            values.append(Value(name, value, request if isinstance(request, int) else None,
                                float(moment) if isinstance(moment, int | float) else None))
    count = document.get("requests")
    return Reading(completed, tuple(values), now,
                   count if isinstance(count, int) and not isinstance(count, bool) else None,
                   Floor(_count(memory.get("floor_bytes")),
                         _count(memory.get("floor_bytes_per_request"))))


def _count(value: Any) -> int:
    # A non-negative integer the server stated, else 0 (an older server states none).
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def status_reader(client: httpx.AsyncClient, status_url: str) -> MemoryReader:
    """Reads the guard's latest sample from a server's ``/vramguard/status``; every way it can
    fail (unreachable, timeout, 4xx/5xx, not JSON, no memory block) is a one-line
    :class:`EnvironmentProblem`."""
    async def read(completed: int) -> Reading:
        try:
            response = await client.get(status_url)
        except httpx.TimeoutException as exc:
            raise _status_error(status_url, f"did not answer in time ({type(exc).__name__})",
                                hint="raise --timeout, or check the server") from exc
        except httpx.TransportError as exc:
            raise _status_error(status_url, f"could not be reached: {exc or type(exc).__name__}",
                                hint="is the server running at that address?") from exc
        if response.status_code == 404:
            raise _status_error(
                status_url, "answered 404: the server's status endpoint is off (or elsewhere)",
                hint="enable it with VramGuardMiddleware(..., expose_status=True), or pass --pid")
        if response.status_code >= 400:
            raise _status_error(status_url, f"answered {response.status_code} "
                                f"{response.reason_phrase}".rstrip(),
                                hint="point --status-url at the server's /vramguard/status")
        try:
            document = response.json()
        except ValueError as exc:
            kind = response.headers.get("content-type", "no content type")
            raise _status_error(status_url, f"did not answer JSON ({kind})",
                                hint="point --status-url at the server's /vramguard/status") from exc
        return parse_status(document, status_url, completed, time.monotonic())
    return read


def pid_reader(pid: int, vram: Callable[[set[int]], int | None]) -> MemoryReader:
    """Reads a process's device memory (``vram``: e.g. ``Nvml().process_vram``); it is all the
    process holds, allocator cache included, so it stands in for "allocated". Each read is live,
    so each one is fresh (dated by this load test's request count); a pid no device lists gives
    no reading."""
    async def read(completed: int) -> Reading:
        try:
            used = await asyncio.to_thread(vram, {pid})
        except NvmlError as exc:  # the driver refused: no reading, and not a leak (exit 3)
            raise EnvironmentProblem(f"NVML could not read pid {pid}'s memory: {exc}") from exc
        now = time.monotonic()
        # 0: no device lists the pid (not on a GPU, or another pid namespace): no reading, so a
        # wrong pid cannot pass as a flat "no leak".
        values = () if not used else (Value("allocated", used, completed, now),)
        return Reading(completed, values, now)
    return read


async def run_load(plan: LoadPlan, client: httpx.AsyncClient, memory: MemoryReader,
                   freshness: Freshness,
                   progress: Callable[[LoadResult], None] | None = None) -> LoadResult:
    """Send the plan's requests and read memory every ``sample_every`` completed ones.

    The first memory read happens before any request: its errors (status off, not JSON, ...)
    propagate, since nothing has been measured yet. Later, a transport error (the server went
    away), a failing status read or a cancellation (Ctrl-C) ends the run early: the result keeps
    what was measured and ``stopped`` says why.
    """
    result = LoadResult(freshness=freshness)
    started = time.monotonic()
    deadline = None if plan.duration is None else started + plan.duration
    counter = itertools.count()
    first = await memory(0)
    if freshness.base is None:
        freshness.base = first.server_requests
    freshness.add(first)
    result.reads += 1

    def stop(reason: str) -> None:
        if result.stopped is None:
            result.stopped = reason

    async def worker() -> None:
        while result.stopped is None:
            index = next(counter)
            if plan.requests is not None and index >= plan.requests:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                response = await client.request(plan.method, plan.url, headers=list(plan.headers),
                                                content=plan.body_for(index))
            except httpx.TransportError as exc:
                stop(f"request {index} to {plan.url} failed: {exc or type(exc).__name__}")
                return
            result.completed += 1
            key = str(response.status_code)
            result.statuses[key] = result.statuses.get(key, 0) + 1
            if result.completed % plan.sample_every == 0:
                try:
                    freshness.add(await memory(result.completed))
                except EnvironmentProblem as exc:
                    stop(str(exc))
                    return
                result.reads += 1
            if progress is not None:
                result.elapsed = time.monotonic() - started
                progress(result)

    try:
        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task. What was measured is still worth a verdict.
        result.interrupted = True
        stop("interrupted")
    if result.stopped is None and result.completed % plan.sample_every:
        # The last few requests since the last read: one more read so they count.
        try:
            freshness.add(await memory(result.completed))
            result.reads += 1
        except EnvironmentProblem as exc:
            stop(str(exc))
    result.elapsed = time.monotonic() - started
    return result
