"""The diagnosis window: run the target a few more times under tracking, then explain the growth.

``diagnose`` is the only function here that runs user code; it reads (census, sites, referrers,
child processes) and hands plain values to the pure rules in ``causes``.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vramguard.analysis.suspects import Site, Suspect, TensorGrowth
from vramguard.diagnosis.causes import Cause, Evidence, RootKind, classify, write_fix
from vramguard.diagnosis.context import resettable_holder, storing_function, trained
from vramguard.diagnosis.graphs import GraphCount, count_nodes, graph_holders
from vramguard.diagnosis.hooks import find_hook, module_instances
from vramguard.diagnosis.naming import describe, name_chain
from vramguard.diagnosis.paths import Limits, PathFinder, Retainers, Step
from vramguard.diagnosis.sites import SiteTracker
from vramguard.diagnosis.snapshot import is_library
from vramguard.readers.census import CensusTaker, TensorGroup, diff_groups
from vramguard.readers.process import ProcessReader

_log = logging.getLogger("vramguard")
# Every window-born tensor of a group is a candidate (up to this many), so which one the path is
# shown for depends on the heap, not on the order gc lists tensors in.
_EXEMPLARS = 64
_GROUPS = 8
_WORKER_MIN_GROWTH = 4 * 1024 * 1024
# The dtypes of the 0-dim tensors autograd makes from Python numbers (float, int, complex, bool):
# ``loss * 0.5`` or ``loss / steps`` saves the number as a "wrapped" tensor (see _wrapped).
_WRAPPED_DTYPES = frozenset({"float64", "int64", "complex128", "bool"})


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

    The entry point for any verdict that fails a check (``leak``, ``non_torch_growth``, ...):
    tensor groups that grew are explained from one heap snapshot; when no tensor group grew but
    the autograd nodes kept by live tensors did (graph nodes are host memory outside tensor
    storage: ``loss_sum += loss`` after ``backward()``), the suspect is that graph
    (``graph_suspect``). ``known``: suspects from the check; their (whole-check) growth figures
    replace the window's for the same tensor group. Returns at most ``max_suspects``, largest
    retained bytes first.
    """
    taker = CensusTaker()
    children = ProcessReader()
    tracker = tracker or SiteTracker()
    gc.collect()
    before = taker.take()
    nodes_before = _graph_count(taker)
    children_before = children.children_rss()
    began = time.perf_counter()
    with tracker.active():
        for index in range(requests):
            function(start + index)
    window_s = time.perf_counter() - began
    children_after = children.children_rss()
    after = taker.take()
    grown = [g for g in diff_groups(before, after) if g[0].device == device and g[2] > 0][:_GROUPS]
    suspects = _explain(grown, tracker, limits, {_key(s.tensors): s for s in known
                                                 if s.tensors is not None}, taker=taker)
    if not any(s.cause not in (None, Cause.UNKNOWN) for s in suspects):
        graph = graph_suspect(nodes_before, requests, tracker, limits=limits)
        if graph is not None:
            suspects.insert(0, graph)
    worker = _worker_suspect(children_before, children_after, PathFinder(limits))
    if worker is not None:
        suspects.append(worker)
    # Unexplained groups (views of weights re-attributed by the census, say) go last.
    ranked = sorted(suspects, key=lambda s: (s.cause == Cause.UNKNOWN and s.allocated_at is None,
                                             s.graph_nodes is None,
                                             -(s.retained_bytes or 0)))[:max_suspects]
    return Diagnosis(tuple(ranked), requests, window_s, time.perf_counter() - began - window_s)


def _graph_count(taker: CensusTaker, keep: list[Any] | None = None,
                 before: GraphCount | None = None) -> GraphCount:
    live = taker.live_tensors()
    try:
        return count_nodes(live, keep=keep, before=before)
    finally:
        live.clear()


def graph_nodes() -> GraphCount:
    """How many autograd nodes the live tensors' graphs hold now (call before a window, then
    pass it to :func:`graph_suspect` after it)."""
    gc.collect()
    return _graph_count(CensusTaker())


def graph_suspect(before: GraphCount, requests: int, tracker: SiteTracker | None = None, *,
                  limits: Limits | None = None) -> Suspect | None:
    """The autograd graph that grew since ``before`` (at least one node per request), as a
    suspect with cause ``autograd_graph``, its root, and the fix; None when the nodes did not
    grow. For drivers whose verdict failed without tensor bytes growing (``non_torch_growth``
    on CPU, where the native heap grows)."""
    gc.collect()
    keep: list[Any] = []
    after = _graph_count(CensusTaker(), keep, before)
    grown = after.nodes - before.nodes
    if grown < max(1, requests) or not keep:
        keep.clear()
        return None
    retainers = Retainers(keep, limits=limits, exclude=[keep])
    try:
        # The graph that gained most nodes and that a named root holds (a tensor inside a graph
        # has no root of its own).
        holder = next((t for t in keep if retainers.chain(t) is not None), keep[0])
        result = retainers.find(holder, describe(holder))
        path = result.path
        site = None if tracker is None else tracker.site_of(holder)
        allocated_at, stack = (None, None) if site is None else site
        variable = None if path is None else path.variable
        prefer = tuple((s.file, s.function) for s in stack or ())
        evidence = Evidence(
            function=None if allocated_at is None else allocated_at.function,
            file=None if allocated_at is None else allocated_at.file,
            root_kind=None if path is None else path.root.kind,
            root_module=None if path is None else path.root.where,
            variable=variable, graph=True, accumulator=True,
            trained=after.backwarded or trained(keep),
            stored_by=None if path is None else storing_function(
                _user_namespaces(retainers), variable, prefer),
            graph_nodes=grown)
        cause = classify(evidence)
        return Suspect(None, retained_bytes=None, allocated_at=allocated_at, stack=stack,
                       held_by=str(path) if path is not None else result.reason, cause=cause,
                       fix=write_fix(cause, evidence), graph_nodes=grown)
    finally:
        retainers.close()
        keep.clear()


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
    taker: CensusTaker | None = None,
) -> tuple[Suspect, ...]:
    """Explain groups that grew during a window that someone else ran (the web middleware).

    ``grown``: (group, count growth, bytes growth), largest first; ``tracker``: the SiteTracker
    that was active during the window; ``born(tensor)``: True for tensors created during the window
    that the tracker may not have seen (None: only tracked tensors are exemplars). Like
    :func:`diagnose`, it holds the live tensors only while it runs. Largest retained bytes first.
    ``taker``: the census taker the window's own scans used (its later scans are cheaper).
    """
    suspects = _explain(list(grown)[:_GROUPS], tracker, limits,
                        {_key(s.tensors): s for s in known if s.tensors is not None}, born, taker)
    return tuple(sorted(suspects, key=lambda s: (s.cause == Cause.UNKNOWN and s.allocated_at is None,
                                                 -(s.retained_bytes or 0)))[:max_suspects])


def _explain(grown: list[tuple[TensorGroup, int, int]], tracker: SiteTracker, limits: Limits | None,
             known: dict[TensorGroup, Suspect],
             born: Callable[[Any], bool] | None = None,
             taker: CensusTaker | None = None) -> list[Suspect]:
    # ``born``: also counts a tensor as the window's when the tracker has no site for it (the web
    # middleware's handlers may run in threads where the tracker's dispatch mode is not active).
    def in_window(tensor: Any) -> bool:
        return tracker.site_of(tensor) is not None or (born is not None and born(tensor))

    wanted = {group for group, _, _ in grown}
    exemplars: dict[TensorGroup, list[tuple[Any, Any, str, int]]] = {g: [] for g in wanted}
    scalars = {group for group in wanted if _wrapped(group)}
    live = (taker or CensusTaker()).live_tensors()
    # Graph nodes are attributed to the first holder that reaches them: try tensors Python
    # refers to (higher refcount, measured before we add references) before objects only C++
    # keeps (unpacked saved tensors).
    holders = sorted(live, key=sys.getrefcount, reverse=True)
    retainers: Retainers | None = None
    targets: list[Any] = []
    modules: list[Any] = []
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

        scalar_votes: Counter[TensorGroup] = Counter()  # bounded: enough to pick the holder

        def accept(saved: Any, node: str) -> bool:
            group = matching(saved, node)
            if group in scalars and scalar_votes[group] < 2 * _EXEMPLARS \
                    and tracker.site_of(saved) is None:
                scalar_votes[group] += 1
                return True
            return group is not None and in_window(saved)

        # (the list of what graph_holders found dies with the call: no local keeps it)
        fold = _fold_scalars(graph_holders(holders, accept), matching, scalars, wanted,
                             (tracker, in_window), exemplars)
        holders.clear()
        live.clear()
        # One snapshot for every exemplar: the walk stops once all of them are reached.
        targets.extend(t for values in exemplars.values() for t, _, _, _ in values)
        retainers = Retainers(targets, limits=limits, exclude=[exemplars, *exemplars.values(),
                                                              targets, live, holders, modules])
        modules.extend(module_instances())  # one heap pass for every group's hook check
        merged: dict[tuple[Cause, str], Suspect] = {}
        merged_as: dict[TensorGroup, tuple[Cause, str]] = {}
        for group, count, size in grown:
            if group in fold:
                continue
            base = known.get(group) or Suspect(TensorGrowth(
                group.device, group.dtype, group.shape, group.requires_grad, group.grad_fn,
                count, size, group.in_graph))
            suspect = _diagnose_group(base, exemplars[group], tracker, retainers, modules)
            key = (Cause(suspect.cause) if suspect.cause else Cause.UNKNOWN,
                   (suspect.held_by or "").split(" -> ")[0])
            merged_as[group] = key
            previous = merged.get(key)
            if previous is None:
                merged[key] = suspect
            else:  # same root, same cause: one suspect whose retained bytes add up, named by
                # the group the root holds most directly (the outputs a list keeps, not the
                # inputs their graphs keep), then by the larger
                first, second = sorted((previous, suspect), key=lambda s: (
                    (s.held_by or "").count(" -> "), -(s.retained_bytes or 0)))
                merged[key] = replace(first, retained_bytes=(first.retained_bytes or 0)
                                      + (second.retained_bytes or 0))
        return _add_folded(merged, merged_as, fold, grown)
    finally:
        if retainers is not None:
            retainers.close()
        targets.clear()
        modules.clear()
        holders.clear()
        live.clear()
        exemplars.clear()  # the window's tensors belong to the user again


def _fold_scalars(found: list[tuple[Any, Any, str, int]],
                  matching: Callable[[Any, str], TensorGroup | None], scalars: set[TensorGroup],
                  wanted: set[TensorGroup], window: tuple[SiteTracker, Callable[[Any], bool]],
                  exemplars: dict[TensorGroup, list[tuple[Any, Any, str, int]]]
                  ) -> dict[TensorGroup, TensorGroup]:
    """Sort the saved tensors ``graph_holders`` found into ``exemplars``, except the wrapped
    scalars (see :func:`_wrapped`): returns scalar group -> the group they are folded into.

    A scalar goes with the tensor whose graph saved it: its holder's own group when that grew,
    else the group of another tensor the same holder's graph saved (``total = total + loss / 4``:
    the holder does not grow, the graph's saved activations do). The group most scalars go to wins.
    A scalar that goes nowhere is an exemplar only when the window made it (as any other tensor):
    ``accept`` let it through for folding alone.
    """
    tracker, in_window = window
    saved_groups: dict[int, TensorGroup] = {}  # id(holder): ``found`` keeps the holders alive
    for saved, holder, node, _ in found:
        group = matching(saved, node)
        if group is not None and group not in scalars:
            saved_groups.setdefault(id(holder), group)
    votes: dict[TensorGroup, Counter[TensorGroup]] = {g: Counter() for g in scalars}
    for saved, holder, node, retained in found:
        group = matching(saved, node)
        if group is None:
            continue
        if group in scalars and tracker.site_of(saved) is None:
            into: TensorGroup | None = _group_key(holder)
            if into not in wanted or into in scalars:
                into = saved_groups.get(id(holder))
            if into is not None:
                votes[group][into] += 1
                continue
        if in_window(saved):
            exemplars[group].append((saved, holder, node, retained))
    fold = {group: counts.most_common(1)[0][0] for group, counts in votes.items() if counts}
    for group in fold:
        exemplars[group].clear()  # no path is searched for them: they go with their holder
    return fold


def _add_folded(merged: dict[tuple[Cause, str], Suspect],
                merged_as: dict[TensorGroup, tuple[Cause, str]],
                fold: dict[TensorGroup, TensorGroup],
                grown: list[tuple[TensorGroup, int, int]]) -> list[Suspect]:
    """The suspects, with each folded scalar group's bytes added to its holder's suspect."""
    for group, _, size in grown:
        holder_group = fold.get(group)
        into = None if holder_group is None else merged_as.get(holder_group)
        if into is not None:
            suspect = merged[into]
            merged[into] = replace(suspect, retained_bytes=(suspect.retained_bytes or 0) + size)
    return list(merged.values())


def _wrapped(group: TensorGroup) -> bool:
    """True for a group that can be autograd's wrapped scalars: 0-dim, a Python number's dtype,
    no gradient, held by Python only after an unpack (no grad_fn) or saved by a graph node.

    Why they are folded, not diagnosed: in ``loss * 0.5`` the 0.5 becomes an 8-byte tensor before
    the op is dispatched (torch's argument parsing wraps the number) and the op's graph node saves
    it. No aten op allocates it (the site tracker's dispatch mode sees the Python number), so no
    site can be recorded, and once the census has unpacked it gc lists it as a live tensor that
    nothing in Python refers to. As a suspect of its own it had no line
    and no root (cause unknown), listed beside the real allocation as if a second leak; with the
    web fallback (``born``) it got a path but still no line. It lives exactly as long as the
    graph node that saved it, so the fix of the tensor whose graph holds it frees it too: its
    bytes are added to that suspect, and it never becomes one. Only scalars without a site are
    folded (a 0-dim tensor the user made in the window has one); scalars whose holder is in no
    suspect's group stay a suspect of their own, as before.
    """
    return (group.shape == () and group.dtype in _WRAPPED_DTYPES and not group.requires_grad
            and (group.grad_fn is None or group.in_graph))


_FRAME_TRIES = 16  # candidates looked at past one that only a running frame holds


def _from_a_frame(result: Any) -> bool:
    path = result.path
    return path is not None and path.root.kind == RootKind.THREAD_FRAME


def _diagnose_group(base: Suspect, candidates: list[tuple[Any, Any, str, int]],
                    tracker: SiteTracker, retainers: Retainers, modules: list[Any]) -> Suspect:
    growth = base.tensors
    retained = growth.bytes_growth if growth is not None else None
    if not candidates:
        evidence = Evidence()
        return replace(base, retained_bytes=retained, cause=Cause.UNKNOWN,
                       fix=write_fix(Cause.UNKNOWN, evidence))
    # The candidate the walk met first (shortest path, then the walk's order, which depends on
    # the heap only, not on the order gc listed the candidates in): deterministic.
    ranks = [(retainers.snapshot.rank(tensor), position)
             for position, (tensor, _holder, _node, _) in enumerate(candidates)]
    reached = sorted((rank, position) for rank, position in ranks if rank is not None)
    chosen = reached[0][1] if reached else 0
    result = retainers.find(candidates[chosen][0], describe(candidates[chosen][0]))
    # A request still running holds the tensor it is making in a frame local, one step from its
    # root: under load the shortest path often goes there. The growing container is the answer,
    # so the first candidate (same order) that a longer-lived root holds wins; the frame's path
    # is kept only when no candidate has another.
    if _from_a_frame(result):
        for _rank, position in reached[1:_FRAME_TRIES]:
            other = retainers.find(candidates[position][0], describe(candidates[position][0]))
            if other.path is not None and not _from_a_frame(other):
                chosen, result = position, other
                break
    tensor, holder = candidates[chosen][0], candidates[chosen][1]
    chain = retainers.chain(tensor)
    site = tracker.site_of(tensor)
    allocated_at, stack = (None, None) if site is None else site
    path = result.path
    held_by = str(path) if path is not None else result.reason
    graph = holder is not None or (tensor.grad_fn is not None and tensor.requires_grad) or (
        path is not None and any(s.kind == "graph" for s in path.steps))
    hook = None
    reset = None
    if chain is not None and path is not None:
        hook = find_hook(chain, lambda module, index: _module_name(retainers, chain, module, index),
                         modules)
        holder_at = resettable_holder(chain)
        if holder_at is not None:
            reset = f"{name_chain(retainers.snapshot, chain[:holder_at[0] + 1]).dotted}." \
                    f"{holder_at[1]}()"
    variable = None if path is None else path.variable
    stored_by = None
    if path is not None and variable is not None:
        prefer = tuple((s.file, s.function) for s in stack or ())
        stored_by = storing_function(_user_namespaces(retainers), variable, prefer)
    root = None if path is None else path.root
    evidence = Evidence(
        function=None if allocated_at is None else allocated_at.function,
        file=None if allocated_at is None else allocated_at.file,
        root_kind=None if root is None else root.kind,
        root_module=None if root is None else root.where,
        variable=variable,
        direct=path is not None and path.direct,
        graph=graph,
        accumulator=graph and path is not None and not [
            s for s in path.steps if s.kind != "graph"],
        hook=hook,
        cycle=result.cycle,
        trained=graph and trained([tensor if holder is None else holder]),
        grad_cycle=path is not None and any(s == Step("attr", "grad") for s in path.steps),
        stored_by=stored_by,
        reset=reset,
        ipython_cache=root is not None and _is_output_cache(root.name, root.where),
        traceback=root is not None and root.where == "sys" and root.name in _TRACEBACK_NAMES,
    )
    cause = classify(evidence)
    return replace(base, retained_bytes=retained, allocated_at=allocated_at, stack=stack,
                   held_by=held_by, cause=cause, fix=write_fix(cause, evidence))


_TRACEBACK_NAMES = frozenset({"last_traceback", "last_value", "last_exc"})


def _is_output_cache(name: str, where: str) -> bool:
    """IPython's output cache: ``Out``/``_oh``, ``_``, ``__``, ``___`` and ``_N``."""
    if where != "__main__" or "IPython" not in sys.modules:
        return False
    return name in ("Out", "_oh", "_", "__", "___") or (name.startswith("_") and name[1:].isdigit())


def _user_namespaces(retainers: Retainers) -> list[dict[str, Any]]:
    return [s.container for s in retainers.snapshot.sources
            if s.kind in ("module", "namespace") and (s.where == "__main__" or _user_module(s.where))]


def _user_module(name: str) -> bool:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    return file is None or not is_library(file)


def _module_name(retainers: Retainers, chain: Sequence[Any], module: Any, index: int | None) -> str:
    if index is not None and index > 0:
        return name_chain(retainers.snapshot, chain[:index + 1]).dotted
    found = PathFinder().find(module, type(module).__name__)
    return found.path.dotted if found.path is not None else type(module).__name__


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
