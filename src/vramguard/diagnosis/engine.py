"""The diagnosis window: run the target a few more times under tracking, then explain the growth.

``diagnose`` is the only function here that runs user code; it reads (census, sites, referrers,
child processes) and hands plain values to the pure rules in ``causes``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vramguard.analysis.suspects import Site, Suspect, TensorGrowth
from vramguard.diagnosis.causes import Cause, Evidence, classify, write_fix
from vramguard.diagnosis.paths import Limits, PathFinder, PathResult, Step, graph_holders
from vramguard.diagnosis.sites import SiteTracker
from vramguard.readers.census import CensusTaker, TensorGroup, diff_groups
from vramguard.readers.process import ProcessReader

_log = logging.getLogger("vramguard")
_EXEMPLARS = 3
_GROUPS = 8
_WORKER_MIN_GROWTH = 4 * 1024 * 1024
_HOOK_DICTS = {"_forward_hooks": "forward", "_forward_pre_hooks": "forward_pre",
               "_backward_hooks": "full_backward", "_backward_pre_hooks": "full_backward_pre"}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Ranked suspects and what the window cost."""

    suspects: tuple[Suspect, ...]
    requests: int
    window_s: float
    analysis_s: float

    def __str__(self) -> str:
        return (f"{len(self.suspects)} suspect(s) from a {self.requests}-request window "
                f"({self.window_s:.2f} s + {self.analysis_s:.2f} s analysis)")


def _group_key(tensor: Any, saved_by: str | None = None) -> TensorGroup:
    grad_fn = saved_by if saved_by is not None else (
        None if tensor.grad_fn is None else type(tensor.grad_fn).__name__)
    return TensorGroup(str(tensor.device), str(tensor.dtype).removeprefix("torch."),
                       tuple(tensor.shape), bool(tensor.requires_grad), grad_fn,
                       saved_by is not None)


def _describe(tensor: Any) -> str:
    return f"Tensor({', '.join(map(str, tensor.shape))})"


def diagnose(
    function: Callable[[int], Any],
    *,
    requests: int = 30,
    start: int = 0,
    device: str = "cpu",
    known: Sequence[Suspect] = (),
    max_suspects: int = 5,
    limits: Limits | None = None,
    tracker: SiteTracker | None = None,
) -> Diagnosis:
    """Call ``function(start + i)`` ``requests`` times under tracking and explain what grew.

    ``known``: suspects from the check; their (whole-check) growth figures replace the window's
    for the same tensor group. Returns at most ``max_suspects``, largest retained bytes first.
    """
    taker = CensusTaker()
    children = ProcessReader()
    tracker = tracker or SiteTracker()
    gc.collect()
    before = taker.take()
    children_before = children.children_rss()
    began = time.perf_counter()
    with tracker.active():
        for index in range(requests):
            function(start + index)
    window_s = time.perf_counter() - began
    children_after = children.children_rss()
    after = taker.take()
    grown = [g for g in diff_groups(before, after) if g[0].device == device and g[2] > 0][:_GROUPS]
    suspects = _explain(grown, tracker, PathFinder(limits), {_key(s.tensors): s for s in known
                                                             if s.tensors is not None})
    worker = _worker_suspect(children_before, children_after, PathFinder(limits))
    if worker is not None:
        suspects.append(worker)
    # Unexplained groups (views of weights re-attributed by the census, say) go last.
    ranked = sorted(suspects, key=lambda s: (s.cause == Cause.UNKNOWN and s.allocated_at is None,
                                             -(s.retained_bytes or 0)))[:max_suspects]
    return Diagnosis(tuple(ranked), requests, window_s, time.perf_counter() - began - window_s)


def _key(growth: TensorGrowth) -> TensorGroup:
    return TensorGroup(growth.device, growth.dtype, growth.shape, growth.requires_grad,
                       growth.grad_fn, growth.in_graph)


def explain(
    grown: Sequence[tuple[TensorGroup, int, int]],
    tracker: SiteTracker,
    *,
    born: Callable[[Any], bool] | None = None,
    known: Sequence[Suspect] = (),
    max_suspects: int = 5,
    limits: Limits | None = None,
) -> tuple[Suspect, ...]:
    """Explain groups that grew during a window that someone else ran (the web middleware).

    ``grown``: (group, count growth, bytes growth), largest first; ``tracker``: the SiteTracker
    that was active during the window; ``born(tensor)``: True for tensors created during the window
    that the tracker may not have seen (None: only tracked tensors are exemplars). Like
    :func:`diagnose`, it holds the live tensors only while it runs. Largest retained bytes first.
    """
    suspects = _explain(list(grown)[:_GROUPS], tracker, PathFinder(limits),
                        {_key(s.tensors): s for s in known if s.tensors is not None}, born)
    return tuple(sorted(suspects, key=lambda s: (s.cause == Cause.UNKNOWN and s.allocated_at is None,
                                                 -(s.retained_bytes or 0)))[:max_suspects])


def _explain(grown: list[tuple[TensorGroup, int, int]], tracker: SiteTracker, finder: PathFinder,
             known: dict[TensorGroup, Suspect],
             born: Callable[[Any], bool] | None = None) -> list[Suspect]:
    # ``born``: also counts a tensor as the window's when the tracker has no site for it (the web
    # middleware's handlers may run in threads where the tracker's dispatch mode is not active).
    def in_window(tensor: Any) -> bool:
        return tracker.site_of(tensor) is not None or (born is not None and born(tensor))

    wanted = {group for group, _, _ in grown}
    exemplars: dict[TensorGroup, list[tuple[Any, Any, str, int]]] = {g: [] for g in wanted}
    live = CensusTaker().live_tensors()
    # Graph nodes are attributed to the first holder that reaches them: try tensors Python
    # refers to (higher refcount, measured before we add references) before objects only C++
    # keeps (unpacked saved tensors).
    holders = sorted(live, key=sys.getrefcount, reverse=True)
    try:
        for tensor in reversed(live):  # newest last in gc order: the window's tensors first
            group = _group_key(tensor)
            if group in wanted and len(exemplars[group]) < _EXEMPLARS and in_window(tensor):
                exemplars[group].append((tensor, None, "", 0))

        # A saved tensor unpacked once (by the census, say) keeps a Python object that gc lists
        # as live but nothing Python refers to: such groups are matched under both keys.
        def matching(saved: Any, node: str) -> TensorGroup | None:
            for group in (_group_key(saved, node), _group_key(saved)):
                if group in wanted and len(exemplars[group]) < 2 * _EXEMPLARS:
                    return group
            return None

        def accept(saved: Any, node: str) -> bool:
            return matching(saved, node) is not None and in_window(saved)

        found = graph_holders(holders, accept)
        for saved, holder, node, retained in found:
            saved_group = matching(saved, node)
            if saved_group is not None:
                exemplars[saved_group].append((saved, holder, node, retained))
        del live, found
        ignore = {id(exemplars), *(id(v) for v in exemplars.values())}
        merged: dict[tuple[Cause, str], Suspect] = {}
        for group, count, size in grown:
            base = known.get(group) or Suspect(TensorGrowth(
                group.device, group.dtype, group.shape, group.requires_grad, group.grad_fn,
                count, size, group.in_graph))
            suspect = _diagnose_group(base, exemplars[group], tracker, finder, ignore)
            key = (Cause(suspect.cause) if suspect.cause else Cause.UNKNOWN,
                   (suspect.held_by or "").split(" -> ")[0])
            previous = merged.get(key)
            if previous is None:
                merged[key] = suspect
            else:  # same root, same cause: one suspect whose retained bytes add up
                first, second = sorted((previous, suspect), key=lambda s: -(s.retained_bytes or 0))
                merged[key] = replace(first, retained_bytes=(first.retained_bytes or 0)
                                      + (second.retained_bytes or 0))
        return list(merged.values())
    finally:
        holders.clear()
        exemplars.clear()  # the window's tensors belong to the user again


def _diagnose_group(base: Suspect, candidates: list[tuple[Any, Any, str, int]],
                    tracker: SiteTracker, finder: PathFinder, ignore: set[int]) -> Suspect:
    growth = base.tensors
    retained = growth.bytes_growth if growth is not None else None
    if not candidates:
        evidence = Evidence()
        return replace(base, retained_bytes=retained, cause=Cause.UNKNOWN,
                       fix=write_fix(Cause.UNKNOWN, evidence))
    best: tuple[PathResult, Any, Any, str] | None = None
    for tensor, holder, node, _ in candidates:
        target = tensor if holder is None else holder
        result = finder.find(target, _describe(target), ignore=ignore)
        if best is None or (result.path is not None and best[0].path is None):
            best = (result, tensor, holder, node)
        if result.path is not None:
            break
    assert best is not None  # candidates is not empty
    result, tensor, holder, node = best
    site = tracker.site_of(tensor)
    allocated_at, stack = (None, None) if site is None else site
    path = result.path
    held_by = result.reason
    if path is not None:
        if holder is not None:
            path = replace(path, steps=(*path.steps, Step("graph", node)), target=_describe(tensor))
        held_by = str(path)
    graph = holder is not None or (tensor.grad_fn is not None and tensor.requires_grad)
    hook = _find_hook(result.containers, finder) if path is not None else None
    evidence = Evidence(
        function=None if allocated_at is None else allocated_at.function,
        file=None if allocated_at is None else allocated_at.file,
        root_kind=None if path is None else path.root.kind,
        root_module=None if path is None else path.root.where,
        variable=None if path is None else path.variable,
        direct=path is not None and path.direct,
        graph=graph,
        accumulator=graph and path is not None
        and not (path.steps[:-1] if holder is not None else path.steps),
        hook=hook,
        cycle=result.cycle,
    )
    cause = classify(evidence)
    return replace(base, retained_bytes=retained, allocated_at=allocated_at, stack=stack,
                   held_by=held_by, cause=cause, fix=write_fix(cause, evidence))


def _module_instances() -> list[Any]:
    import torch

    classes, todo = [], [torch.nn.Module]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    wanted = set(classes)
    found = gc.get_referrers(*classes)
    try:
        return [obj for obj in found if type(obj) in wanted]
    finally:
        del found


def _hook_references(hook: Any) -> Iterable[Any]:
    function = hook
    if isinstance(hook, types.MethodType):
        yield hook.__self__
        yield from getattr(hook.__self__, "__dict__", {}).values()
        function = hook.__func__
    elif not isinstance(hook, types.FunctionType):
        yield from getattr(hook, "__dict__", {}).values()
        function = type(hook).__call__ if callable(hook) else None
    if not isinstance(function, types.FunctionType):
        return
    yield from (cell.cell_contents for cell in function.__closure__ or ()
                if cell.cell_contents is not None)
    yield from function.__defaults__ or ()
    globals_ = function.__globals__
    yield from (globals_[name] for name in function.__code__.co_names if name in globals_)


def _hook_name(hook: Any) -> str:
    if isinstance(hook, types.FunctionType):
        code = hook.__code__
        if hook.__name__ == "<lambda>":
            return f"<lambda> at {os.path.basename(code.co_filename)}:{code.co_firstlineno}"
        return f"{hook.__qualname__}()"
    if isinstance(hook, types.MethodType):
        return f"{hook.__qualname__}()"
    return f"{type(hook).__qualname__} instance"


def _find_hook(containers: tuple[int, ...], finder: PathFinder) -> tuple[str, str, str] | None:
    """(module path, hook name, hook kind) of a module hook that references the path's objects."""
    if not containers:
        return None
    wanted = set(containers)
    modules = _module_instances()
    try:
        for module in modules:
            for attr, kind in _HOOK_DICTS.items():
                for hook in getattr(module, attr, {}).values():
                    if any(id(obj) in wanted for obj in _hook_references(hook)):
                        found = finder.find(module, type(module).__name__,
                                            ignore={id(modules)})
                        name = found.path.dotted if found.path else type(module).__name__
                        return name, _hook_name(hook), kind
    finally:
        modules.clear()
    return None


def _worker_suspect(before: dict[int, int], after: dict[int, int],
                    finder: PathFinder) -> Suspect | None:
    """Child processes that lived through the window and grew: DataLoader workers, usually."""
    growth = sum(after[pid] - before[pid] for pid in after if pid in before)
    if growth < _WORKER_MIN_GROWTH:
        return None
    variable, function, file, held_by = None, None, None, "child processes of this process"
    loader = _persistent_loader(set(after))
    if loader is not None:
        dataset = loader.dataset
        getitem = getattr(type(dataset), "__getitem__", None)
        code = getattr(getitem, "__code__", None)
        function = getattr(getitem, "__qualname__", None)
        file = None if code is None else code.co_filename
        found = finder.find(loader, "DataLoader workers")
        if found.path is not None:
            variable, held_by = found.path.root.name, str(found.path)
        del dataset, loader
    evidence = Evidence(function=function, file=file, variable=variable,
                        worker_growth_bytes=growth)
    cause = classify(evidence)
    return Suspect(None, retained_bytes=growth, held_by=held_by, cause=cause,
                   fix=write_fix(cause, evidence))


def _persistent_loader(pids: set[int]) -> Any:
    try:
        from torch.utils.data import DataLoader
    except ImportError:  # pragma: no cover - torch without data utilities
        return None
    for obj in gc.get_referrers(DataLoader, *DataLoader.__subclasses__()):
        if not isinstance(obj, DataLoader):
            continue
        iterator = getattr(obj, "_iterator", None)
        workers = getattr(iterator, "_workers", ())
        if any(getattr(w, "pid", None) in pids for w in workers):
            return obj
    return None


def site_line(site: Site | None) -> str:
    """``file:line`` or ``unknown`` for reports."""
    return "unknown" if site is None else f"{site.file}:{site.line}"
