"""Cause and fix: pure rules from plain evidence to a closed vocabulary and a sentence of advice
written against the user's own function and variable names."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from vramguard.units import format_bytes


class Cause(enum.StrEnum):
    """Why leaked memory stays alive."""

    AUTOGRAD_GRAPH = "autograd_graph"
    CONTAINER_GROWTH = "container_growth"
    GLOBAL_REFERENCE = "global_reference"
    HOOK_RETENTION = "hook_retention"
    REFERENCE_CYCLE = "reference_cycle"
    WORKER_PROCESS_GROWTH = "worker_process_growth"
    OUTPUT_CACHE = "output_cache"  # IPython's Out/_N: set by vramguard.ipython, not by classify
    UNKNOWN = "unknown"


class RootKind(enum.StrEnum):
    """What kind of named root a reference path starts from."""

    MODULE_GLOBAL = "module_global"
    CLASS_ATTRIBUTE = "class_attribute"
    FUNCTION_DEFAULT = "function_default"
    CLOSURE = "closure"
    THREAD_FRAME = "thread_frame"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the walkers found about one suspect, as plain values.

    ``variable``: the name the user would recognise (the global, attribute, parameter or closure
    variable holding the growing container). ``direct``: the tensors sit directly in the root's
    object (``metrics['k']``), not in a container reached through other objects. ``graph``: the
    tensors are kept through an autograd graph (saved tensors, or a held output with a grad_fn).
    ``accumulator``: the graph is held by one tensor rebound every request (``total = total +
    loss``), not by many outputs in a container. ``hook``: ``(module path, hook name, kind)`` of a
    module hook that references the container. ``trained``: a backward pass ran over the graph
    (a training step: never advise inference mode). ``grad_cycle``: the path runs through a
    ``.grad`` whose graph holds the tensor (``backward(create_graph=True)``). ``stored_by``: the
    user function whose code stores into the root. ``reset``: the call that empties the holder
    (``auroc.reset()``, ``embed.cache_clear()``). ``ipython_cache``: the root is IPython's output
    cache (``Out``, ``_N``); ``traceback``: the root is ``sys.last_traceback``.
    ``graph_nodes``: autograd nodes that grew over the window (growth without tensor bytes).
    """

    function: str | None = None
    file: str | None = None
    root_kind: RootKind | None = None
    root_module: str | None = None
    variable: str | None = None
    direct: bool = False
    graph: bool = False
    accumulator: bool = False
    hook: tuple[str, str, str] | None = None
    cycle: bool = False
    worker_growth_bytes: int | None = None
    per_request_bytes: float | None = None
    trained: bool = False
    grad_cycle: bool = False
    stored_by: str | None = None
    reset: str | None = None
    ipython_cache: bool = False
    traceback: bool = False
    graph_nodes: int | None = None


def classify(evidence: Evidence) -> Cause:
    """The cause, most specific first: workers, hooks, graphs, then where the reference lives."""
    if evidence.worker_growth_bytes is not None:
        return Cause.WORKER_PROCESS_GROWTH
    if evidence.hook is not None:
        return Cause.HOOK_RETENTION
    if evidence.grad_cycle:
        return Cause.REFERENCE_CYCLE
    if evidence.graph or evidence.graph_nodes:
        return Cause.AUTOGRAD_GRAPH
    if evidence.root_kind is None:
        return Cause.REFERENCE_CYCLE if evidence.cycle else Cause.UNKNOWN
    if evidence.direct and evidence.root_kind in (RootKind.MODULE_GLOBAL, RootKind.CLASS_ATTRIBUTE):
        return Cause.GLOBAL_REFERENCE
    return Cause.CONTAINER_GROWTH


def _where(evidence: Evidence) -> str:
    if evidence.function is None:
        return "the code that allocates them"
    file = f" in {os.path.basename(evidence.file)}" if evidence.file else ""
    return f"{evidence.function}(){file}"


def _stored(evidence: Evidence, var: str) -> str:
    """`` (stored by `step()`)`` when the function storing into the root is not the allocating one."""
    if evidence.stored_by is None or evidence.stored_by == evidence.function:
        return ""
    return f" (stored into {var} by `{evidence.stored_by}()`)"


def write_fix(cause: Cause, evidence: Evidence) -> str:
    """One or two sentences of advice naming the user's function and variable."""
    where = _where(evidence)
    var = f"`{evidence.variable}`" if evidence.variable else "a container"
    if evidence.ipython_cache and cause is not Cause.WORKER_PROCESS_GROWTH:
        return (f"IPython's output cache ({var}) keeps every displayed result of {where}: end the "
                f"line with `;` so it is not cached, run `%reset -f out`, or set "
                f"`InteractiveShell.cache_size = 0`")
    if evidence.traceback and cause is not Cause.WORKER_PROCESS_GROWTH:
        return ("an interrupted cell or a caught exception keeps its frames (and their tensors) in "
                "`sys.last_traceback`: `%xdel` the variables or set `sys.last_traceback = None` "
                "(also `sys.last_value`)")
    if cause is Cause.REFERENCE_CYCLE and evidence.grad_cycle:
        return (f"`backward(create_graph=True)` in {where} makes a reference cycle: each "
                f"parameter's `.grad` keeps a graph that refers back to the parameter, so every "
                f"step's graph stays alive; use `torch.autograd.grad(..., create_graph=True)` "
                f"instead, or set the gradients to None after use "
                f"(`optimizer.zero_grad(set_to_none=True)` / `p.grad = None`)")
    if evidence.reset is not None and cause in (Cause.CONTAINER_GROWTH, Cause.GLOBAL_REFERENCE,
                                                Cause.AUTOGRAD_GRAPH):
        detach = (" and `.detach()` what you pass it" if cause is Cause.AUTOGRAD_GRAPH else "")
        holder = evidence.reset.rsplit(".", 1)[0]
        return (f"`{holder}` keeps what every call of {where} gives it until it is emptied: "
                f"call `{evidence.reset}` after each epoch/compute{detach}")
    if cause is Cause.WORKER_PROCESS_GROWTH:
        grown = format_bytes(evidence.worker_growth_bytes or 0, signed=True)
        loader = f" of {var}" if evidence.variable else ""
        return (f"the worker processes{loader} grew {grown} during the diagnosis window: "
                f"{where} keeps state in each worker, and persistent_workers=True keeps the "
                f"workers alive; return values instead of accumulating them in the Dataset, bound "
                f"what it keeps, or recreate the workers (persistent_workers=False)")
    if cause is Cause.HOOK_RETENTION and evidence.hook is not None:
        module, hook, kind = evidence.hook
        return (f"the {kind} hook {hook} on `{module}` stores the module's output in {var} on every "
                f"call: remove the hook when done (keep the handle of register_{kind}_hook and "
                f"call .remove()), or store `output.detach().cpu()` in a bounded container")
    if cause is Cause.AUTOGRAD_GRAPH:
        stored = _stored(evidence, var)
        nodes = (f" ({evidence.graph_nodes:+d} autograd nodes over the window, host memory "
                 f"outside tensor storage)" if evidence.graph_nodes else "")
        if evidence.accumulator or evidence.graph_nodes:
            if evidence.trained:
                return (f"{where} accumulates into {var}{stored} after `backward()`, so every "
                        f"step's graph stays chained to it{nodes}: accumulate `loss.item()` (or "
                        f"`loss.detach()`)")
            return (f"{where} accumulates into {var}{stored} with grad enabled, so every "
                    f"request's graph is chained to it{nodes}: accumulate `loss.item()` (or carry "
                    f"a `.detach()`ed value in {var}), or run it under `torch.no_grad()`")
        if evidence.trained:
            return (f"{where} keeps outputs that carry their graph in {var}{stored} in a training "
                    f"step: keep `out.detach()` (or `.item()` for scalars, `.cpu()` for copies)")
        return (f"{where} runs with grad enabled and keeps outputs in {var}{stored}: run it under "
                f"`torch.inference_mode()`, or append `out.detach()` (or `.cpu()`)")
    if cause is Cause.GLOBAL_REFERENCE:
        kind = "class attribute" if evidence.root_kind is RootKind.CLASS_ATTRIBUTE else "module global"
        return (f"the {kind} {var} keeps a tensor from every call of {where}"
                f"{_stored(evidence, var)}: store plain numbers "
                f"(`.item()`, `.tolist()`), bound it (`collections.deque(maxlen=...)`), or clear "
                f"it after use")
    if cause is Cause.CONTAINER_GROWTH:
        if evidence.root_kind is RootKind.FUNCTION_DEFAULT:
            return (f"{var} is a mutable default argument, shared by every call of {where}: "
                    f"default to None and create the container inside the call")
        return (f"{var} gains an entry on every call of {where}{_stored(evidence, var)} and is "
                f"never trimmed: bound it "
                f"(`collections.deque(maxlen=...)`, an LRU cache) or delete entries when done; "
                f"store `.detach().cpu()` copies if you must keep them")
    if cause is Cause.REFERENCE_CYCLE:
        return (f"tensors allocated in {where} are reachable only through reference cycles, which "
                f"only the cycle collector frees: break the cycle (a weakref, or `del` the "
                f"back-reference) or make sure `gc` runs (`gc.collect()`)")
    return (f"no named root keeps the tensors allocated in {where} within the search limits: "
            f"look for C extensions, caches or threads holding them")
