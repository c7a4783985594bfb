"""Drive an HTTP endpoint and read the server's memory as it goes: the engine of ``loadtest``.

It sends exactly the request it is given (method, headers, body) to exactly the URL it is given,
``concurrency`` at a time, and every ``sample_every`` completed requests reads the server's memory:
from its ``/vramguard/status`` (the guard's latest sample), or NVML's per-process memory for a
pid. The readings become :class:`~vramguard.analysis.samples.Sample` values for the usual verdict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from vramguard.analysis.samples import Sample
from vramguard.errors import EnvironmentProblem

MemoryReader = Callable[[int], Awaitable[Sample | None]]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send and how much: ``requests`` or ``duration`` seconds (one of them)."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    concurrency: int = 1
    requests: int | None = 200
    duration: float | None = None
    sample_every: int = 1
    timeout: float = 30.0

    def __str__(self) -> str:
        amount = f"{self.requests} requests" if self.requests else f"{self.duration:g}s"
        return f"{self.method} {self.url}: {amount}, {self.concurrency} at a time"


@dataclass(slots=True)
class LoadResult:
    """What the load test saw: completed requests, failures by status, and memory samples."""

    completed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    elapsed: float = 0.0


def status_reader(client: httpx.AsyncClient, status_url: str) -> MemoryReader:
    """Reads the guard's latest sample from a server's ``/vramguard/status``."""
    async def read(completed: int) -> Sample | None:
        try:
            response = await client.get(status_url)
        except httpx.TransportError as exc:
            raise EnvironmentProblem(f"could not read {status_url}: {exc}") from exc
        if response.status_code == 404:
            raise EnvironmentProblem(
                f"{status_url} answered 404: the server's status endpoint is off",
                hint="enable it with VramGuardMiddleware(..., expose_status=True), or pass --pid")
        response.raise_for_status()
        memory = response.json().get("memory") or {}
        return Sample(request=completed, time=time.monotonic(),
                      allocated=memory.get("allocated"), reserved=memory.get("reserved"),
                      device_used=memory.get("device_used"), device_total=memory.get("device_total"))
    return read


def pid_reader(pid: int, vram: Callable[[set[int]], int | None]) -> MemoryReader:
    """Reads a process's device memory (``vram``: e.g. ``Nvml().process_vram``); it is all the
    process holds, allocator cache included, so it stands in for "allocated"."""
    async def read(completed: int) -> Sample | None:
        used = await asyncio.to_thread(vram, {pid})
        return None if used is None else Sample(request=completed, time=time.monotonic(),
                                                allocated=used)
    return read


async def run_load(plan: LoadPlan, client: httpx.AsyncClient, memory: MemoryReader,
                   progress: Callable[[LoadResult], None] | None = None) -> LoadResult:
    """Send the plan's requests and sample memory; stops at the first transport error."""
    result = LoadResult()
    started = time.monotonic()
    deadline = None if plan.duration is None else started + plan.duration
    issued = 0
    first = await memory(0)
    if first is not None:
        result.samples.append(first)

    async def worker() -> None:
        nonlocal issued
        while True:
            if plan.requests is not None and issued >= plan.requests:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            issued += 1
            try:
                response = await client.request(plan.method, plan.url, headers=list(plan.headers),
                                                content=plan.body)
            except httpx.TransportError as exc:
                raise EnvironmentProblem(f"request to {plan.url} failed: {exc}") from exc
            result.completed += 1
            if response.status_code >= 400:
                key = str(response.status_code)
                result.failures[key] = result.failures.get(key, 0) + 1
            if result.completed % plan.sample_every == 0:
                sample = await memory(result.completed)
                if sample is not None:
                    result.samples.append(sample)
            if progress is not None:
                result.elapsed = time.monotonic() - started
                progress(result)

    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    result.elapsed = time.monotonic() - started
    return result
