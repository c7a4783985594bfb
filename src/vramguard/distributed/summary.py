"""One rank's compact summary: what :func:`~vramguard.distributed.share` publishes to the store.

A few hundred bytes of JSON per rank (schema ``vramguard.rank/1``), so a store that coordinates
thousands of ranks is not burdened. :func:`summarize` reads a guard once; everything else is pure.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from vramguard.analysis.verdict import Verdict, VerdictKind
from vramguard.distributed.groups import groups_verdict
from vramguard.errors import VramguardError
from vramguard.units import format_bytes

if TYPE_CHECKING:
    from vramguard.guard import Guard
    from vramguard.readers.rank import RankIdentity

SCHEMA = "vramguard.rank/1"


@dataclass(frozen=True, slots=True)
class RankSummary:
    """One rank's state at ``time`` (Unix seconds, the publisher's wall clock).

    ``bytes_per_step`` and ``ci95`` are the growth of the metric that decided the verdict (None
    when the verdict has no growth figure); ``memory_bytes`` the latest measured allocated bytes;
    ``suspect`` the top growing tensor group's line (leaks only); ``every_s`` the publisher's
    interval, from which readers decide staleness.
    """

    rank: int
    local_rank: int | None
    world_size: int | None
    verdict: VerdictKind
    reason: str
    requests: int
    bytes_per_step: float | None
    ci95: tuple[float, float] | None
    memory_bytes: int | None
    suspect: str | None
    process_groups: int | None
    time: float
    every_s: float
    pid: int
    host: str

    @property
    def is_leak(self) -> bool:
        """True when the rank's own verdict fails a check (leak, non-torch or group growth)."""
        return self.verdict in (VerdictKind.LEAK, VerdictKind.NON_TORCH_GROWTH,
                                VerdictKind.PROCESS_GROUP_GROWTH)

    @property
    def growth_significant(self) -> bool:
        """True when the rank's own growth interval lies wholly above zero."""
        return self.ci95 is not None and self.ci95[0] > 0

    def growth_text(self) -> str:
        """``+1.2 KiB/step``, or ``unknown`` with no figure."""
        if self.bytes_per_step is None:
            return "unknown"
        return f"{format_bytes(self.bytes_per_step, signed=True)}/step"

    def to_json(self) -> str:
        """The compact document published to the store."""
        return json.dumps({
            "schema": SCHEMA, "rank": self.rank, "local_rank": self.local_rank,
            "world_size": self.world_size, "verdict": str(self.verdict), "reason": self.reason,
            "requests": self.requests, "bytes_per_step": _finite(self.bytes_per_step),
            "ci95": None if self.ci95 is None else [_finite(v) for v in self.ci95],
            "memory_bytes": self.memory_bytes, "suspect": self.suspect,
            "process_groups": self.process_groups, "time": self.time, "every_s": self.every_s,
            "pid": self.pid, "host": self.host,
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RankSummary:
        """Parse a published document; :class:`SummaryError` for anything else."""
        try:
            data = json.loads(text)
            if data.get("schema") != SCHEMA:
                raise SummaryError(f"expected a {SCHEMA} document, got schema "
                                   f"{data.get('schema')!r}")
            ci = data["ci95"]
            return cls(
                rank=int(data["rank"]), local_rank=_opt_int(data["local_rank"]),
                world_size=_opt_int(data["world_size"]), verdict=VerdictKind(data["verdict"]),
                reason=str(data["reason"]), requests=int(data["requests"]),
                bytes_per_step=_opt_float(data["bytes_per_step"]),
                ci95=None if ci is None or None in ci else (float(ci[0]), float(ci[1])),
                memory_bytes=_opt_int(data["memory_bytes"]), suspect=data["suspect"],
                process_groups=_opt_int(data["process_groups"]), time=float(data["time"]),
                every_s=float(data["every_s"]), pid=int(data["pid"]), host=str(data["host"]),
            )
        except SummaryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SummaryError(f"expected a {SCHEMA} document, got {str(text)[:80]!r} "
                               f"({type(exc).__name__}: {exc})") from None


class SummaryError(VramguardError):
    """A store value under vramguard's prefix that is not a rank summary."""


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def rank_verdict(guard: Guard) -> Verdict:
    """The guard's verdict, or ``process_group_growth`` when its live process-group count grows
    steadily (the memory verdict then goes into the warnings): the groups' memory is outside any
    allocator the guard reads, so their growth is the finding."""
    verdict = guard.verdict()
    groups = groups_verdict(guard.process_groups.points, warmup=verdict.warmup)
    if groups is None:
        return verdict
    return replace(groups, warnings=(f"memory: {verdict}", *verdict.warnings))


def summarize(guard: Guard, identity: RankIdentity, *, every_s: float,
              clock: Callable[[], float], suspects: bool = True) -> RankSummary:
    """Read ``guard`` once into the summary of the rank ``identity`` names (its rank must be
    known). ``suspects``: on a leak, name the top growing tensor group (a grouped census:
    milliseconds, so once per publish, never per step)."""
    if identity.rank is None:
        raise SummaryError("expected a process with a known rank, got one outside a "
                           "distributed job")
    verdict = rank_verdict(guard)
    growth = verdict.growth
    suspect = None
    if suspects and verdict.kind is VerdictKind.LEAK:
        grown = guard.growing_tensors(limit=1)
        if grown:
            group, count, size = grown[0]
            suspect = f"{group}: {count:+d} tensors, {format_bytes(size, signed=True)}"
    memory = None
    for sample in reversed(guard.samples):
        if sample.allocated is not None:
            memory = int(sample.allocated)
            break
    points = guard.process_groups.points
    return RankSummary(
        rank=identity.rank,
        local_rank=identity.local_rank, world_size=identity.world_size, verdict=verdict.kind,
        reason=verdict.reason, requests=guard.requests,
        bytes_per_step=None if growth is None else growth.bytes_per_request,
        ci95=None if growth is None else growth.ci95, memory_bytes=memory, suspect=suspect,
        process_groups=points[-1][1] if points else None, time=clock(), every_s=every_s,
        pid=os.getpid(), host=socket.gethostname(),
    )
