"""Drive a callable for N requests under a dense Guard and collect a :class:`CheckResult`.

Used by ``vramguard check``, ``vramguard demo`` and the pytest plugin; no printing here, progress
goes through a callback.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from vramguard.analysis.samples import Sample
from vramguard.analysis.suspects import Suspect, TensorGrowth
from vramguard.analysis.verdict import Verdict, VerdictKind, after_collection, auto_warmup
from vramguard.errors import TargetFailed, UsageError
from vramguard.guard import Guard
from vramguard.units import format_bytes

if TYPE_CHECKING:
    from vramguard.diagnosis.sites import SiteTracker


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Everything a check found: the verdict, the growing tensors and the samples behind them."""

    target: str
    device: str
    requests: int
    warmup: int
    verdict: Verdict
    suspects: tuple[Suspect, ...]
    samples: tuple[Sample, ...]
    diagnosis_seconds: float | None = None  # the diagnosis window and its analysis; None: not run

    def __str__(self) -> str:
        return f"{self.target} on {self.device}: {self.verdict}"


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
) -> CheckResult:
    """Call ``function(i)`` for ``i`` in ``range(requests)``, each a guarded step.

    After a leak verdict (or when child processes such as DataLoader workers grew), a diagnosis
    window of ``diagnosis_requests`` more calls (0: none) fills in each suspect's allocation
    site, reference path, cause and fix; a clean target pays nothing for it. With
    ``track_sites`` the allocation-site tracker runs over the whole check instead (every request
    pays for it, ~1.3-1.4x on small ops), and a leak is explained without an extra window.
    """
    if requests < 1:
        raise UsageError(f"expected --requests to be a positive number, got {requests}")
    if warmup is not None and not 0 <= warmup < requests:
        raise UsageError(f"expected --warmup between 0 and {requests - 1}, got {warmup}")
    resolved_warmup = auto_warmup(requests) if warmup is None else warmup
    # Counters (the CPU heap, CUDA's allocator) are read every request. Where the census is the
    # CPU signal instead (no heap counter), it costs a few ms in a torch process and ~100 are
    # plenty for the verdict, so long checks take one every few requests.
    guard = Guard(device, overhead_budget=None, warmup=resolved_warmup,
                  max_samples=4 * requests + 16, census_every=max(1, requests // 100))
    children_start: int | None = None
    live_at_warmup: int | None = None
    tracker = _site_tracker() if track_sites else None
    with tracker.active() if tracker is not None else contextlib.nullcontext():
        children_start, live_at_warmup = _drive(
            target, function, guard, requests, resolved_warmup, progress,
            watch_children=diagnosis_requests > 0 or tracker is not None)
    verdict = guard.verdict()
    if verdict.kind is VerdictKind.LEAK:  # garbage cycles look like a leak until collected
        verdict = after_collection(verdict, live_at_warmup, guard.live_bytes_after_collection())
    grown = guard.growing_tensors(limit=max_suspects) if verdict.kind is VerdictKind.LEAK else []
    # Tensor groups explain allocator growth only, hence suspects for a leak verdict only.
    suspects = tuple(
        Suspect(TensorGrowth(g.device, g.dtype, g.shape, g.requires_grad, g.grad_fn,
                             count, size, g.in_graph))
        for g, count, size in grown
    )
    children_growth = None if children_start is None else _children_rss() - children_start
    workers_grew = children_growth is not None and children_growth > _WORKER_GROWTH
    if workers_grew:
        # Child processes are outside this process's tensors and allocator, so they do not
        # change the verdict; they are reported (and diagnosed) so they are not missed.
        verdict = replace(verdict, warnings=(
            *verdict.warnings,
            f"child processes (e.g. DataLoader workers) grew by "
            f"{format_bytes(children_growth, signed=True)} after warm-up: see the suspects"))
    diagnosis_seconds: float | None = None
    began = time.perf_counter()
    if tracker is not None and suspects:
        from vramguard.diagnosis.engine import explain

        suspects = explain(grown, tracker, known=suspects, max_suspects=max_suspects) or suspects
        diagnosis_seconds = time.perf_counter() - began
    elif diagnosis_requests > 0 and (suspects or workers_grew):
        suspects = _diagnose(target, function, requests, diagnosis_requests, str(guard.device)
                             if not guard.device.is_cpu else "cpu", suspects, max_suspects)
        diagnosis_seconds = time.perf_counter() - began
    return CheckResult(
        target=target,
        device=str(guard.device),
        requests=requests,
        warmup=resolved_warmup,
        verdict=verdict,
        suspects=suspects,
        samples=guard.samples,
        diagnosis_seconds=diagnosis_seconds,
    )


def _drive(target: str, function: Callable[[int], Any], guard: Guard, requests: int,
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
        try:
            with guard.step():
                function(index)
        except Exception as exc:
            raise TargetFailed(
                f"target {target!r} raised {type(exc).__name__} on request {index}: {exc}",
                completed=index,
                traceback_text=traceback.format_exc(),
            ) from exc
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


def _diagnose(target: str, function: Callable[[int], Any], start: int, requests: int,
              device: str, known: tuple[Suspect, ...], max_suspects: int) -> tuple[Suspect, ...]:
    from vramguard.diagnosis import diagnose

    try:
        diagnosis = diagnose(function, requests=requests, start=start, device=device,
                             known=known, max_suspects=max_suspects)
    except Exception as exc:
        raise TargetFailed(
            f"target {target!r} raised {type(exc).__name__} in the diagnosis window: {exc}",
            completed=start, traceback_text=traceback.format_exc()) from exc
    return diagnosis.suspects or known
