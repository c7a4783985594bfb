"""OOM post-mortem: when memory runs out, write what the guard knew to a file, then let it crash.

Two ways in: ``Guard(oom_report="oom.txt")`` writes when an out-of-memory error leaves a guarded
step, and :func:`on_oom` (a context manager and decorator) does the same for any block; on CUDA
both also hook the caching allocator's OOM observer, which fires for an OOM *anywhere* in the
process, before the allocator raises. The error is never swallowed: the report is written and
the exception continues on its way.

The report is JSON (schema ``vramguard.oom/1``) when the path ends in ``.json``, else text. In a
distributed job each rank writes its own file, ``oom.txt`` becoming ``oom.rank1.txt``: ranks
often run out of memory together, and one file would keep only the last writer's report. Writing
it must not fail the service a second time: every part is best-effort, and a part that cannot be
read says so in the report.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from vramguard.guard import Guard

SCHEMA = "vramguard.oom/1"
_log = logging.getLogger("vramguard")
F = TypeVar("F", bound=Callable[..., Any])

# Substrings of allocator errors that mean "out of memory" when they are not already
# torch.OutOfMemoryError: the CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator:
# not enough memory: you tried to allocate ..."), older CUDA builds a RuntimeError too.
_OOM_MESSAGES = ("out of memory", "not enough memory", "defaultcpuallocator: can't allocate",
                 "failed to allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error from PyTorch's allocators (CUDA, CPU, others) or Python."""
    if isinstance(error, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    if isinstance(error, RuntimeError):
        message = str(error).lower()
        return any(text in message for text in _OOM_MESSAGES)
    return False


def oom_document(
    *,
    source: str,
    error: BaseException | None = None,
    guard: Guard | None = None,
    device: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict. Reads the guard and the allocator; never raises."""
    from vramguard.readers.rank import read_identity

    problems: list[str] = []
    identity = read_identity()
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "source": source,
        "pid": os.getpid(),
        "rank": identity.rank,
        "local_rank": identity.local_rank,
        "world_size": identity.world_size,
        "error": None if error is None else {"type": type(error).__name__,
                                             "message": str(error)},
        "detail": detail,
        "device": device if device is not None else (None if guard is None else str(guard.device)),
        "requests": None,
        "verdict": None,
        "suspects": [],
        "allocator": None,
        "problems": problems,
    }
    if guard is not None:
        document["requests"] = guard.requests
        _part(problems, "verdict", lambda: document.__setitem__("verdict", _verdict(guard)))
        _part(problems, "suspects", lambda: document.__setitem__("suspects", _suspects(guard)))
    _part(problems, "allocator",
          lambda: document.__setitem__("allocator", _allocator(document["device"], guard)))
    return document


def _part(problems: list[str], name: str, fill: Callable[[], None]) -> None:
    try:
        fill()
    except Exception as exc:  # a post-mortem with a gap beats no post-mortem
        problems.append(f"{name}: {type(exc).__name__}: {exc}")


def _verdict(guard: Guard) -> dict[str, Any]:
    verdict = guard.verdict()
    growth = verdict.growth
    return {
        "kind": str(verdict.kind),
        "reason": verdict.reason,
        "growth": None if growth is None else str(growth),
        "bytes_per_request": None if growth is None else growth.bytes_per_request,
        "detected_after": verdict.detected_after,
        "warnings": list(verdict.warnings),
        "summary": str(verdict),
    }


def _suspects(guard: Guard) -> list[dict[str, Any]]:
    from vramguard.analysis.suspects import Suspect, TensorGrowth
    from vramguard.reporters.json_report import suspect_document

    # Only censuses already taken are compared: a new census now would allocate and take long.
    return [
        suspect_document(Suspect(TensorGrowth(g.device, g.dtype, g.shape, g.requires_grad,
                                              g.grad_fn, count, size, g.in_graph)))
        for g, count, size in guard.growing_tensors()
    ]


def _allocator(device: str | None, guard: Guard | None) -> dict[str, Any]:
    from vramguard.readers.process import ProcessReader

    process = ProcessReader()
    summary: dict[str, Any] = {"process_rss_bytes": process.rss(),
                               "host_total_bytes": process.host_total}
    if guard is not None and guard.samples:
        last = guard.samples[-1]
        summary["last_sample"] = {"request": last.request, "allocated_bytes": last.allocated,
                                  "reserved_bytes": last.reserved,
                                  "device_used_bytes": last.device_used,
                                  "device_total_bytes": last.device_total}
    if device is not None and device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or torch.cuda.current_device())
        stats = torch.cuda.memory_stats(index)
        keep = ("allocated_bytes.all.current", "allocated_bytes.all.peak",
                "reserved_bytes.all.current", "reserved_bytes.all.peak",
                "inactive_split_bytes.all.current", "num_alloc_retries", "num_ooms")
        summary["cuda"] = {key: stats.get(key) for key in keep}
        free, total = torch.cuda.mem_get_info(index)
        summary["cuda"]["device_free_bytes"], summary["cuda"]["device_total_bytes"] = free, total
        summary["cuda_summary"] = torch.cuda.memory_summary(index, abbreviated=True)
    return summary


def render_text(document: dict[str, Any]) -> str:
    """The report for humans: what failed, the verdict so far, suspects, then the allocator."""
    where = "" if document.get("rank") is None else (
        f"rank {document['rank']}/{document.get('world_size') or '?'}, ")
    lines = [f"vramguard OOM post-mortem ({document['schema']}) at {document['time']}, "
             f"{where}pid {document['pid']}, device {document['device'] or 'unknown'}"]
    error = document["error"]
    if error is not None:
        lines.append(f"error: {error['type']}: {error['message']}")
    if document["detail"]:
        lines.append("detail: " + ", ".join(f"{k}={v}" for k, v in document["detail"].items()))
    lines.append(f"source: {document['source']}")
    if document["requests"] is not None:
        lines.append(f"requests so far: {document['requests']}")
    verdict = document["verdict"]
    lines.append(f"verdict so far: {verdict['summary'] if verdict else 'unknown (no guard)'}")
    if document["suspects"]:
        lines.append("growing tensors:")
        for rank, suspect in enumerate(document["suspects"], 1):
            tensors = suspect["tensors"]
            if tensors is None:
                lines.append(f"  {rank}. child processes")
            else:
                lines.append(f"  {rank}. {tensors['count_growth']:+d} x Tensor"
                             f"{tuple(tensors['shape'])} {tensors['dtype']} on "
                             f"{tensors['device']}, {tensors['bytes_growth']:+d} bytes")
            for key in ("allocated_at", "held_by", "cause", "fix"):
                if suspect.get(key):
                    lines.append(f"     {key.replace('_', ' ')}: {suspect[key]}")
    allocator = document["allocator"] or {}
    summary = allocator.pop("cuda_summary", None)
    lines.append("allocator:")
    lines.extend(f"  {key}: {value}" for key, value in allocator.items())
    if summary:
        lines.append(summary)
    lines.extend(f"could not read {problem}" for problem in document["problems"])
    return "\n".join(lines) + "\n"


def write_oom_report(
    path: str | os.PathLike[str],
    *,
    source: str = "exception",
    error: BaseException | None = None,
    guard: Guard | None = None,
    device: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Path | None:
    """Write the report to ``path`` (atomically; per rank in a distributed job, see
    :func:`rank_path`); the path written, or None if even that failed (logged)."""
    target = rank_path(Path(path))
    try:
        document = oom_document(source=source, error=error, guard=guard, device=device,
                                detail=detail)
        if target.suffix == ".json":
            text = json.dumps(document, indent=2, default=str) + "\n"
        else:
            text = render_text(document)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)  # a reader never sees half a report
    except Exception:  # the OOM is the news; a failed report must not replace it
        _log.warning("vramguard: could not write the OOM report to %s", target, exc_info=True)
        return None
    return target


def rank_path(path: Path, rank: int | None = None) -> Path:
    """``oom.txt`` -> ``oom.rank1.txt`` for rank 1 (``rank`` None: this process's rank, if it
    is in a distributed job); unchanged outside one."""
    if rank is None:
        from vramguard.readers.rank import read_identity

        rank = read_identity().rank
    if rank is None:
        return path
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


class OomWatch:
    """Writes an OOM report to ``path``; made by :func:`on_oom` or ``Guard(oom_report=...)``.

    Use as a context manager or a decorator: an out-of-memory error leaving the block writes the
    report and propagates unchanged. On CUDA the allocator's OOM observer also writes it for an
    OOM anywhere in the process, until :meth:`close`. ``reports`` counts reports written.
    """

    def __init__(self, path: str | os.PathLike[str], *, guard: Guard | None = None,
                 device: str | None = None) -> None:
        self.path = Path(path)
        # A weak reference: the process-wide observer list holds this watch, and it must not keep
        # a dropped Guard (and its censuses) alive for the rest of the process.
        self._guard = None if guard is None else weakref.ref(guard)
        self._device = device
        self.reports = 0
        self.closed = False
        _HUB.add(self)

    @property
    def guard(self) -> Guard | None:
        """The guard whose verdict goes into the report, if it is still alive."""
        return None if self._guard is None else self._guard()

    def write(self, *, source: str, error: BaseException | None = None,
              detail: dict[str, Any] | None = None) -> Path | None:
        """Write the report now (called on OOM; public so a handler of your own can call it)."""
        written = write_oom_report(self.path, source=source, error=error, guard=self.guard,
                                   device=self._device, detail=detail)
        if written is not None:
            self.reports += 1
        return written

    def close(self) -> None:
        """Stop reporting OOMs seen by the CUDA observer (blocks keep working until left)."""
        self.closed = True
        _HUB.discard(self)

    def __enter__(self) -> OomWatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if error is not None and is_out_of_memory(error):
            self.write(source="exception", error=error)
        # Returning None: the error, OOM or not, always propagates.

    def __call__(self, fn: F) -> F:
        """Decorator form: each call of ``fn`` runs inside this watch."""
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"OomWatch(path={str(self.path)!r}, reports={self.reports}, closed={self.closed})"


class _ObserverHub:
    """The one OOM observer vramguard attaches to the CUDA allocator, fanning out to watches.

    Module state on purpose: the allocator's observer list is process-wide and has no detach, so
    attaching one observer per watch would grow it forever; watches come and go here instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: list[OomWatch] = []
        self._attached = False

    def add(self, watch: OomWatch) -> None:
        with self._lock:
            self._watches.append(watch)
        self._attach()

    def discard(self, watch: OomWatch) -> None:
        with self._lock:
            self._watches = [w for w in self._watches if w is not watch]

    def _attach(self) -> None:
        if self._attached:
            return
        try:
            import torch
        except ImportError:
            return  # no torch, no CUDA allocator to observe
        attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
        if attach is None or not torch.cuda.is_available():
            return  # a CPU build: OOMs are caught as they leave a watched block or step
        with self._lock:
            if self._attached:
                return
            attach(self._observe)
            self._attached = True

    def _observe(self, device: int, alloc: int, device_allocated: int, device_free: int) -> None:
        # Called by the allocator before it raises OutOfMemoryError; the error itself follows.
        with self._lock:
            watches = list(self._watches)
        detail = {"cuda_device": device, "requested_bytes": alloc,
                  "device_allocated_bytes": device_allocated, "device_free_bytes": device_free}
        for watch in watches:
            watch._device = watch._device or f"cuda:{device}"
            watch.write(source="cuda_observer", detail=detail)


_HUB = _ObserverHub()


def on_oom(path: str | os.PathLike[str], *, guard: Guard | None = None,
           device: str | None = None) -> OomWatch:
    """Write an OOM post-mortem to ``path`` when memory runs out; the error still propagates.

    Returns an :class:`OomWatch`: on CUDA it is active at once for OOMs anywhere in the process
    (the allocator's observer); use it as a context manager or decorator to also catch OOMs of
    other allocators (CPU) in a block. ``guard`` adds its verdict so far and its suspects.
    """
    if device is None and guard is not None:
        device = str(guard.device)
    return OomWatch(path, guard=guard, device=device)
