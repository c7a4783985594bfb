"""Drive a callable for N requests under a dense Guard and collect a :class:`~vramguard.Report`.

Used by ``vramguard check``, ``vramguard demo`` and the pytest plugin; no printing here, progress
goes through a callback. A target may be an ``async def`` function: :func:`run_check` awaits each
request on one event loop of its own; :func:`run_check_async` awaits them in the caller's loop.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vramguard._awaiting import Awaiter, undrivable
from vramguard.analysis.verdict import VerdictKind, after_collection, auto_warmup
from vramguard.errors import TargetFailed, UsageError, VramguardError
from vramguard.guard import Guard
from vramguard.guard_diagnosis import Window, suspects_of
from vramguard.report import DiagnosisTimings, Report, Unit
from vramguard.units import format_bytes

if TYPE_CHECKING:
    from vramguard.analysis.suspects import Suspect
    from vramguard.diagnosis.sites import SiteTracker

CheckResult = Report  # the name this value had before it became public as vramguard.Report


def run_check(
    target: str,
    function: Callable[[int], Any],
    *,
    requests: int = 300,
    warmup: int | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    max_suspects: int = 5,
    diagnosis_requests: int = 30,
    track_sites: bool = False,
    unit: Unit = "request",
) -> Report:
    """Call ``function(i)`` for ``i`` in ``range(requests)``, each a guarded step.

    When ``function`` returns a coroutine (an ``async def`` target), the request is ``await
    function(i)`` on one event loop made for the run; an awaitable that loop cannot drive (a
    future of another loop, an async generator) is a :class:`UsageError`. After a leak verdict (or
    when child processes such as DataLoader workers grew), a diagnosis window of
    ``diagnosis_requests`` more calls (0: none) fills in each suspect's allocation site, reference
    path, cause and fix; a clean target pays nothing for it. With ``track_sites`` the
    allocation-site tracker runs over the whole check instead (every request pays for it, ~1.3-1.4x
    on small ops), and a leak is explained without an extra window.
    """
    resolved_warmup = _validate(requests, warmup)
    guard = _guard(device, requests, resolved_warmup, unit)
    with Awaiter(target) as awaiter:
        def call(index: int) -> Any:
            return awaiter.drive(function(index))

        tracker = _site_tracker() if track_sites else None
        with tracker.active() if tracker is not None else contextlib.nullcontext():
            children_start, live_at_warmup = _drive(
                target, call, guard, requests, resolved_warmup, progress,
                watch_children=diagnosis_requests > 0 or tracker is not None)
        report, grown, workers_grew = _conclude(target, guard, requests, resolved_warmup,
                                                children_start, live_at_warmup, max_suspects,
                                                unit)
        began = time.perf_counter()
        suspects = report.suspects
        if tracker is not None and suspects:
            from vramguard.diagnosis.engine import explain

            suspects = explain(grown, tracker, known=suspects, max_suspects=max_suspects) or suspects
            timings = DiagnosisTimings(0, 0.0, time.perf_counter() - began)
        elif diagnosis_requests > 0 and (suspects or workers_grew or _unexplained(report)):
            suspects, timings = _diagnose(target, call, requests, diagnosis_requests,
                                          _device_name(guard), suspects, max_suspects)
        else:
            return report
    return replace(report, suspects=suspects, diagnosis=timings,
                   diagnosis_seconds=timings.total_s)


async def run_check_async(
    target: str,
    function: Callable[[int], Awaitable[Any] | Any],
    *,
    requests: int = 300,
    warmup: int | None = None,
    device: str = "auto",
    max_suspects: int = 5,
    diagnosis_requests: int = 30,
    unit: Unit = "request",
) -> Report:
    """:func:`run_check` inside the running event loop (asyncio, or trio through anyio): each
    request is ``await function(i)`` in the caller's task; the analysis runs synchronously."""
    resolved_warmup = _validate(requests, warmup)
    guard = _guard(device, requests, resolved_warmup, unit)

    async def call(index: int) -> Any:
        result = function(index)
        return await result if _awaitable(result, target) else result

    children_start: int | None = None
    live_at_warmup: int | None = None
    for index in range(requests):
        if index == resolved_warmup:
            live_at_warmup = guard.live_bytes_after_collection()
            if diagnosis_requests > 0:
                children_start = _children_rss()
        with _as_target_failure(target, index, "on request"), guard.step():
            await call(index)
    report, _grown, workers_grew = _conclude(target, guard, requests, resolved_warmup,
                                             children_start, live_at_warmup, max_suspects, unit)
    if diagnosis_requests <= 0 or not (report.suspects or workers_grew or _unexplained(report)):
        return report
    window = Window(diagnosis_requests, _device_name(guard), report.suspects,
                    max_suspects=max_suspects, background=False)
    for index in range(requests, requests + diagnosis_requests):
        with _as_target_failure(target, requests, "in the diagnosis window"):
            context = window.enter()
            try:
                await call(index)
            finally:
                window.leave(context)
    suspects, timings = window.result()
    return replace(report, suspects=suspects, diagnosis=timings,
                   diagnosis_seconds=None if timings is None else timings.total_s)


def _awaitable(result: Any, target: str) -> bool:
    import inspect

    problem = undrivable(result)
    if problem is not None:
        raise UsageError(f"target {target!r} returned {problem}")
    return inspect.isawaitable(result)


def _unexplained(report: Report) -> bool:
    # non_torch_growth: the diagnosis also explains growth outside tensor storage (autograd
    # graph nodes kept by `loss_sum += loss`); see vramguard.diagnosis.engine.graph_suspect.
    return report.verdict.kind is VerdictKind.NON_TORCH_GROWTH


def _validate(requests: int, warmup: int | None) -> int:
    if requests < 1:
        raise UsageError(f"expected --requests to be a positive number, got {requests}")
    if warmup is not None and not 0 <= warmup < requests:
        raise UsageError(f"expected --warmup between 0 and {requests - 1}, got {warmup}")
    return auto_warmup(requests) if warmup is None else warmup


def _guard(device: str, requests: int, warmup: int, unit: Unit) -> Guard:
    # Counters (the CPU heap, CUDA's allocator) are read every request. Where the census is the
    # CPU signal instead (no heap counter), it costs a few ms in a torch process and ~100 are
    # plenty for the verdict, so long checks take one every few requests.
    # The check runs its own diagnosis window, so the Guard's is off.
    return Guard(device, overhead_budget=None, warmup=warmup, max_samples=4 * requests + 16,
                 census_every=max(1, requests // 100), diagnose="never", unit=unit)


def _device_name(guard: Guard) -> str:
    return "cpu" if guard.device.is_cpu else str(guard.device)


@contextlib.contextmanager
def _as_target_failure(target: str, index: int, where: str) -> Any:
    try:
        yield
    except VramguardError:
        raise  # ours (an undrivable awaitable): a usage error, not the target's failure
    except Exception as exc:
        raise TargetFailed(
            f"target {target!r} raised {type(exc).__name__} {where} {index}: {exc}"
            if where == "on request" else
            f"target {target!r} raised {type(exc).__name__} {where}: {exc}",
            completed=index,
            traceback_text=traceback.format_exc(),
        ) from exc


def _conclude(target: str, guard: Guard, requests: int, warmup: int,
              children_start: int | None, live_at_warmup: int | None,
              max_suspects: int, unit: Unit) -> tuple[Report, list[Any], bool]:
    """The verdict and unexplained suspects after the loop: (report, grown groups, workers grew)."""
    verdict = guard.verdict()
    if verdict.kind is VerdictKind.LEAK:  # garbage cycles look like a leak until collected
        verdict = after_collection(verdict, live_at_warmup, guard.live_bytes_after_collection())
    grown = guard.growing_tensors(limit=max_suspects) if verdict.kind is VerdictKind.LEAK else []
    # Tensor groups explain allocator growth only, hence suspects for a leak verdict only.
    suspects = suspects_of(grown)
    children_growth = None if children_start is None else _children_rss() - children_start
    workers_grew = children_growth is not None and children_growth > _WORKER_GROWTH
    if workers_grew:
        # Child processes are outside this process's tensors and allocator, so they do not
        # change the verdict; they are reported (and diagnosed) so they are not missed.
        verdict = replace(verdict, warnings=(
            *verdict.warnings,
            f"child processes (e.g. DataLoader workers) grew by "
            f"{format_bytes(children_growth, signed=True)} after warm-up: see the suspects"))
    report = Report(target=target, device=str(guard.device), requests=requests, warmup=warmup,
                    verdict=verdict, suspects=suspects, samples=guard.samples, unit=unit)
    return report, grown, workers_grew


def _drive(target: str, call: Callable[[int], Any], guard: Guard, requests: int,
           warmup: int, progress: Callable[[int], None] | None, *,
           watch_children: bool) -> tuple[int | None, int | None]:
    """The check's request loop; returns (children's RSS, live bytes) at the end of warm-up."""
    children_start: int | None = None
    live_at_warmup: int | None = None
    for index in range(requests):
        if index == warmup:
            # The reference for telling garbage cycles from a leak (see after_collection).
            live_at_warmup = guard.live_bytes_after_collection()
            if watch_children:
                children_start = _children_rss()
        with _as_target_failure(target, index, "on request"), guard.step():
            call(index)
        if progress is not None:
            progress(index + 1)
    return children_start, live_at_warmup


def _site_tracker() -> SiteTracker:
    from vramguard.diagnosis.sites import SiteTracker

    return SiteTracker()


_WORKER_GROWTH = 8 * 1024 * 1024  # child RSS growth over the check that earns a diagnosis window


def _children_rss() -> int:
    # Two reads per check (after warm-up, at the end): ~1-2 ms each with psutil.
    from vramguard.readers.process import ProcessReader

    return sum(ProcessReader().children_rss().values())


def _diagnose(target: str, call: Callable[[int], Any], start: int, requests: int,
              device: str, known: tuple[Suspect, ...],
              max_suspects: int) -> tuple[tuple[Suspect, ...], DiagnosisTimings]:
    from vramguard.diagnosis import diagnose

    with _as_target_failure(target, start, "in the diagnosis window"):
        diagnosis = diagnose(call, requests=requests, start=start, device=device,
                             known=known, max_suspects=max_suspects)
    timings = DiagnosisTimings(diagnosis.requests, diagnosis.window_s, diagnosis.analysis_s)
    return diagnosis.suspects or known, timings
