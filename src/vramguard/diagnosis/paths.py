"""Why a tensor is alive: the reference path from a named root to it.

The pure half (``Root``, ``Step``, ``ReferencePath``) lives in ``refpath`` and formats the paths.
This module is the walking half: ``PathFinder`` runs a bounded breadth-first search over
``gc.get_referrers`` from the tensor outwards until it meets a named root: a module global, a class
attribute, a function's default argument, a closure variable or a local of another thread's frame.
Tensors that only an autograd graph holds are first traced to the live tensor whose ``grad_fn``
graph saved them (``graph_holders``).

The finder holds strong references only while it searches and drops them in ``finally``: the
diagnosis must not become the leak.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vramguard.diagnosis.causes import RootKind
from vramguard.diagnosis.refpath import ReferencePath, Root, Step

__all__ = ["Limits", "PathFinder", "PathResult", "ReferencePath", "Root", "Step", "graph_holders"]

@dataclass(frozen=True, slots=True)
class PathResult:
    """What a search found: a path, or ``None`` with the reason (and whether cycles were seen)."""

    path: ReferencePath | None
    reason: str
    cycle: bool = False
    containers: tuple[int, ...] = ()  # ids of objects on the path (for the hook check)
    explored: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one search."""

    max_depth: int = 14
    max_seconds: float = 1.0
    max_nodes: int = 20_000


def _type_name(obj: Any) -> str:
    return type(obj).__name__


def _is_anonymous(function: types.FunctionType) -> bool:
    return "<" in function.__qualname__  # <lambda>, make.<locals>.handle


class PathFinder:
    """Bounded BFS over ``gc.get_referrers`` to a named root.

    ``modules`` (default ``sys.modules``) and ``clock`` are injectable for tests.
    """

    def __init__(self, limits: Limits | None = None, *, modules: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.limits = limits or Limits()
        self._modules = modules
        self._clock = clock

    def find(self, target: Any, describe: str, *, ignore: Iterable[int] = ()) -> PathResult:
        """The shortest path from a named root to ``target`` within the limits."""
        search = _Search(self, target, describe, set(ignore))
        try:
            return search.run()
        finally:
            search.close()  # the search's own references to user objects end here

    def module_dicts(self) -> dict[int, str]:
        """id(module.__dict__) -> module name."""
        modules = sys.modules if self._modules is None else self._modules
        return {id(vars(m)): name for name, m in list(modules.items())
                if m is not None and hasattr(m, "__dict__")}


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_DEMO = os.path.join(_PACKAGE, "demo", "")


def _own_code(filename: str) -> bool:
    """True for vramguard's own source files (its bundled demo plays user code)."""
    return filename.startswith(_PACKAGE) and not filename.startswith(_DEMO)


class _Search:
    def __init__(self, finder: PathFinder, target: Any, describe: str, ignore: set[int]) -> None:
        self.finder = finder
        self.limits = finder.limits
        self.describe = describe
        self.module_dicts = finder.module_dicts()
        current = threading.get_ident()
        self.own_frames: set[int] = set()
        self.frames: list[tuple[types.FrameType, str]] = []
        self.thread_frames: dict[int, str] = {}
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            f: types.FrameType | None = frame
            while f is not None:
                # vramguard's own frames in other threads too (a census running in the training
                # thread while the Guard's analysis runs in its own): never a root (h10).
                if ident == current or _own_code(f.f_code.co_filename):
                    self.own_frames.add(id(f))
                else:
                    self.thread_frames[id(f)] = names.get(ident, f"thread {ident}")
                    # a running frame's locals are not visited by gc: scan them directly
                    self.frames.append((f, names.get(ident, f"thread {ident}")))
                f = f.f_back
        del frame, f
        self.objects: dict[int, Any] = {id(target): target}
        self.parent: dict[int, tuple[int, Step | None]] = {id(target): (0, None)}
        self.held: list[Any] = []
        self.ignore = ignore | {id(self.objects), id(self.parent), id(self.held), id(self.frames),
                                id(self)}
        self.target_id = id(target)
        self.cycle = False
        self.fallback: tuple[int, Root] | None = None

    def close(self) -> None:
        self.frames.clear()
        self.objects.clear()
        self.held.clear()

    def run(self) -> PathResult:
        started = self.finder._clock()
        frontier = [self.target_id]
        for _depth in range(self.limits.max_depth):
            next_frontier: list[int] = []
            for node_id in frontier:
                if self.finder._clock() - started > self.limits.max_seconds:
                    return self._give_up(f"no root found within {self.limits.max_seconds:g} s")
                if len(self.objects) > self.limits.max_nodes:
                    return self._give_up(f"no root found within {self.limits.max_nodes} objects")
                found = self._expand(node_id, next_frontier)
                if found is not None:
                    return found
            if not next_frontier:
                if self.fallback is not None:
                    return self._result(*self.fallback)
                return PathResult(None, "no named root holds it: only reference cycles or "
                                  "objects gc cannot see", self.cycle, explored=len(self.objects))
            frontier = next_frontier
        return self._give_up(f"no root found within depth {self.limits.max_depth}")

    def _give_up(self, reason: str) -> PathResult:
        if self.fallback is not None:
            return self._result(*self.fallback)
        return PathResult(None, reason, self.cycle, explored=len(self.objects))

    def _expand(self, node_id: int, frontier: list[int]) -> PathResult | None:
        node = self.objects[node_id]
        for frame, thread in self.frames:
            name = next((k for k, v in frame.f_locals.items() if v is node), None)
            if name is not None:
                return self._result(node_id, Root(RootKind.THREAD_FRAME, name, _type_name(node),
                                                  f"{frame.f_code.co_name}() in thread {thread}"))
        referrers = gc.get_referrers(node)
        self.held.append(referrers)
        self.ignore.add(id(referrers))
        for ref in referrers:
            ref_id = id(ref)
            if ref_id in self.ignore or ref_id in self.own_frames or ref is self.held:
                continue
            if ref_id in self.parent:
                self.cycle = True
                continue
            found = self._edge(ref, node, node_id, frontier)
            if found is not None:
                return found
        return None

    def _push(self, obj: Any, child_id: int, step: Step | None, frontier: list[int]) -> None:
        if id(obj) in self.parent:
            self.cycle = True
            return
        self.objects[id(obj)] = obj
        self.parent[id(obj)] = (child_id, step)
        frontier.append(id(obj))

    def _edge(self, ref: Any, child: Any, child_id: int, frontier: list[int]) -> PathResult | None:
        if isinstance(ref, types.FrameType):
            thread = self.thread_frames.get(id(ref))
            if thread is None:
                return None
            name = next((k for k, v in ref.f_locals.items() if v is child), "?")
            return self._result(child_id, Root(RootKind.THREAD_FRAME, name, _type_name(child),
                                               f"{ref.f_code.co_name}() in thread {thread}"))
        if isinstance(ref, dict):
            return self._dict_edge(ref, child, child_id, frontier)
        if isinstance(ref, list | tuple):
            index = next((i for i, v in enumerate(ref) if v is child), None)
            if index is None:
                return None
            if isinstance(ref, tuple):
                owner = self._defaults_owner(ref)
                if owner is not None:
                    function, name = owner[0], owner[1][index] if index < len(owner[1]) else "?"
                    root = Root(RootKind.FUNCTION_DEFAULT, name, _type_name(child),
                                function.__qualname__)
                    if not _is_anonymous(function):
                        return self._result(child_id, root)
                    self.fallback = self.fallback or (child_id, root)
                    self._push(function, child_id, Step("default", name), frontier)
                    return None
            self._push(ref, child_id, Step("index", str(index)), frontier)
            return None
        if isinstance(ref, types.CellType):
            return self._cell_edge(ref, child, child_id, frontier)
        if isinstance(ref, types.FunctionType | types.MethodType | type | types.ModuleType):
            return None  # reached through their dicts, defaults and cells instead
        attr = _attribute_of(ref, child)
        self._push(ref, child_id, Step("attr", attr) if attr else Step("object", _type_name(ref)),
                   frontier)
        return None

    def _dict_edge(self, ref: dict[Any, Any], child: Any, child_id: int,
                   frontier: list[int]) -> PathResult | None:
        key = next((k for k, v in list(ref.items()) if v is child), _MISSING)
        if key is _MISSING:
            return None  # held as a key: keys of a growing dict are rarely tensors
        module = self.module_dicts.get(id(ref))
        if module is not None:
            return self._result(child_id, Root(RootKind.MODULE_GLOBAL, str(key), _type_name(child),
                                               module))
        for owner in gc.get_referrers(ref):
            if id(owner) in self.ignore or id(owner) in self.own_frames:
                continue
            if isinstance(owner, type) and vars(owner).get(str(key)) is child:
                return self._result(child_id, Root(
                    RootKind.CLASS_ATTRIBUTE, f"{owner.__qualname__}.{key}", _type_name(child),
                    owner.__module__))
            if getattr(owner, "__dict__", None) is ref and not isinstance(owner, type):
                self.parent.setdefault(id(ref), (child_id, None))  # visited: never a second way
                self._push(owner, child_id, Step("attr", str(key)), frontier)
                return None
        self._push(ref, child_id, Step("key", repr(key)), frontier)
        return None

    def _cell_edge(self, cell: types.CellType, child: Any, child_id: int,
                   frontier: list[int]) -> PathResult | None:
        for closure in gc.get_referrers(cell):
            if not isinstance(closure, tuple) or id(closure) in self.ignore:
                continue
            for function in gc.get_referrers(closure):
                if isinstance(function, types.FunctionType) and function.__closure__ is closure:
                    index = closure.index(cell)
                    name = function.__code__.co_freevars[index]
                    root = Root(RootKind.CLOSURE, name, _type_name(child), function.__qualname__)
                    self.fallback = self.fallback or (child_id, root)
                    self._push(function, child_id, Step("closure", name), frontier)
                    return None
        return None

    def _defaults_owner(self, defaults: tuple[Any, ...]) -> tuple[Any, tuple[str, ...]] | None:
        for function in gc.get_referrers(defaults):
            if isinstance(function, types.FunctionType) and function.__defaults__ is defaults:
                code = function.__code__
                names = code.co_varnames[:code.co_argcount][-len(defaults):]
                return function, tuple(names)
        return None

    def _result(self, child_id: int, root: Root) -> PathResult:
        steps: list[Step] = []
        containers: list[int] = []
        node_id = child_id
        while node_id != self.target_id:
            containers.append(node_id)
            parent_id, step = self.parent[node_id]
            if step is not None:
                steps.append(step)
            node_id = parent_id
        return PathResult(ReferencePath(root, tuple(steps), self.describe), "found", self.cycle,
                          tuple(containers), explored=len(self.objects))


_MISSING = object()


def _attribute_of(owner: Any, child: Any) -> str | None:
    """The attribute (instance dict or slot) of ``owner`` that holds ``child``."""
    try:
        values = vars(owner)
    except TypeError:
        values = {}
    for name, value in list(values.items()):
        if value is child:
            return str(name)
    for cls in type(owner).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if isinstance(slot, str) and getattr(owner, slot, None) is child:
                return slot
    return None


def graph_holders(tensors: Iterable[Any],
                  accept: Callable[[Any, str], bool]) -> list[tuple[Any, Any, str, int]]:
    """Tensors only graphs hold, traced to the live tensor whose ``grad_fn`` graph saved them.

    Returns ``(saved tensor, holder, saving node's name, bytes the holder's graph retains)`` for
    every saved tensor that ``accept(saved, node name)`` wants. Nodes are visited once, so a graph
    shared by several live tensors is attributed to the first of them.
    """
    found: list[tuple[Any, Any, str, int]] = []
    seen: set[int] = set()
    keep: list[Any] = []  # nodes stay alive while their ids are in ``seen``
    tensors = list(tensors)
    try:
        # Tensors whose grad_fn no other graph reaches (``total``, not an unpacked saved tensor
        # inside its graph) claim the graph first.
        inner: set[int] = set()
        stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
        while stack:
            node = stack.pop()
            for child, _ in node.next_functions:
                if child is not None and id(child) not in inner:
                    inner.add(id(child))
                    keep.append(child)
                    stack.append(child)
        tensors.sort(key=lambda t: t.grad_fn is None or id(t.grad_fn) in inner)
        for tensor in tensors:
            if tensor.grad_fn is None or id(tensor.grad_fn) in seen:
                continue
            retained: dict[int, int] = {}
            mine: list[tuple[Any, str]] = []
            stack = [tensor.grad_fn]
            while stack:
                node = stack.pop()
                if node is None or id(node) in seen:
                    continue
                seen.add(id(node))
                keep.append(node)
                name = type(node).__name__
                for saved in _saved(node):
                    storage = saved.untyped_storage()
                    retained.setdefault(storage.data_ptr(), storage.nbytes())
                    if accept(saved, name):
                        mine.append((saved, name))
                stack.extend(n for n, _ in node.next_functions)
            total = sum(retained.values())
            found.extend((saved, tensor, name, total) for saved, name in mine)
    finally:
        keep.clear()
        tensors.clear()
    return found


def _saved(node: Any) -> Iterable[Any]:
    import torch

    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            value = getattr(node, name)
        except RuntimeError:
            continue  # already freed by a backward pass
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, tuple | list):
            yield from (v for v in value if isinstance(v, torch.Tensor))
