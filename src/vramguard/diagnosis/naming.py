"""Names a snapshot's object chain the way the user would write it: ``results[3]``,
``Service.seen``, ``history`` (default argument of ``predict()``), ``model.fc.saved``.

Reads attributes of the objects on one chain only (a few dozen), after the walk.
"""

from __future__ import annotations

import gc
import re
import types
from collections.abc import Sequence
from typing import Any

from vramguard.diagnosis.causes import RootKind
from vramguard.diagnosis.refpath import ReferencePath, Root, Step
from vramguard.diagnosis.snapshot import Edge, HeapSnapshot

__all__ = ["describe", "name_chain"]

_MISSING = object()
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe(obj: Any) -> str:
    """``Tensor(4, 32)`` for a tensor, the type's name otherwise."""
    shape = getattr(obj, "shape", None)
    if hasattr(obj, "untyped_storage") and shape is not None:
        return f"Tensor({', '.join(map(str, shape))})"
    return type(obj).__name__


def _key_label(key: Any) -> str:
    """``repr(key)`` without object addresses (they differ from run to run)."""
    return _ADDRESS.sub("", repr(key))


def _type_name(obj: Any) -> str:
    return "Tensor" if hasattr(obj, "untyped_storage") else type(obj).__name__


def _key_of(container: dict[Any, Any], child: Any) -> Any:
    return next((k for k, v in list(container.items()) if v is child), _MISSING)


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


def _is_anonymous(function: types.FunctionType) -> bool:
    return "<" in function.__qualname__  # <lambda>, make.<locals>.handle


def _root(snapshot: HeapSnapshot, chain: Sequence[Any]) -> tuple[Root, int]:
    """The named root and the index in ``chain`` of the object it names."""
    start, first = chain[0], chain[1]
    source = snapshot.source(start)
    edge = snapshot.edge(first)
    if isinstance(start, types.FrameType):
        name = edge.label if edge is not None and edge.kind == "local" else next(
            (str(k) for k, v in start.f_locals.items() if v is first), "?")
        where = source.where if source is not None else f"{start.f_code.co_name}()"
        return Root(RootKind.THREAD_FRAME, name, _type_name(first), where), 1
    key = _key_of(start, first) if isinstance(start, dict) else _MISSING
    where = source.where if source is not None else "?"
    root = Root(RootKind.MODULE_GLOBAL, "?" if key is _MISSING else str(key), _type_name(first),
                where)
    index = 1
    # The nearest class attribute or named function's default argument is the root the user
    # would name (``Service.seen``, not ``service_module.Service.__dict__['seen']``).
    for i in range(1, len(chain) - 2):
        owner, inner, held = chain[i], chain[i + 1], chain[i + 2]
        if isinstance(owner, type) and isinstance(inner, dict) and \
                vars(owner).get(str(_key_of(inner, held))) is held:
            name = f"{owner.__qualname__}.{_key_of(inner, held)}"
            root, index = Root(RootKind.CLASS_ATTRIBUTE, name, _type_name(held),
                               owner.__module__), i + 2
        elif isinstance(owner, types.FunctionType) and owner.__defaults__ is not None \
                and inner is owner.__defaults__ and not _is_anonymous(owner):
            position = next(j for j, v in enumerate(inner) if v is held)
            code = owner.__code__
            names = code.co_varnames[:code.co_argcount][-len(inner):]
            name = names[position] if position < len(names) else "?"
            root, index = Root(RootKind.FUNCTION_DEFAULT, name, _type_name(held),
                               owner.__qualname__), i + 2
    return root, index


def name_chain(snapshot: HeapSnapshot, chain: Sequence[Any],
               target: str | None = None) -> ReferencePath:
    """The reference path a chain from ``HeapSnapshot.chain`` reads as."""
    root, index = _root(snapshot, chain)
    steps: list[Step] = []
    graph: str | None = None  # inside an autograd graph: the saving node, once known
    i = index + 1
    while i < len(chain):
        parent, child = chain[i - 1], chain[i]
        edge = snapshot.edge(child)
        if edge is None or edge.parent is not parent:
            edge = _autograd_edge(parent, child)
        if edge is not None:
            if edge.kind in ("next",) or (edge.kind == "attr" and edge.label == "grad_fn"):
                graph = graph or ""
            elif edge.kind == "saved" or (edge.kind == "attr" and edge.label == "variable"):
                steps.append(Step("graph", edge.label if edge.kind == "saved" else "AccumulateGrad"))
                graph = None
            elif edge.kind == "local":
                steps.append(Step("local", edge.label))
            else:
                steps.append(Step("attr", edge.label))
            i += 1
            continue
        if graph is not None:
            steps.append(Step("graph", type(parent).__name__))
            graph = None
        step, skip = _step(chain, i)
        if step is not None:
            steps.append(step)
        i += skip
    if graph is not None:
        steps.append(Step("graph", type(chain[-1]).__name__))
    return ReferencePath(root, tuple(steps), target or describe(chain[-1]))


def _autograd_edge(parent: Any, child: Any) -> Edge | None:
    """The autograd edge from ``parent`` to ``child`` when gc reported it too (a tensor visits
    its ``grad_fn``'s Python object once that exists)."""
    if hasattr(parent, "untyped_storage"):
        if getattr(parent, "grad_fn", None) is child and child is not None:
            return Edge(parent, "attr", "grad_fn")
        if (parent.is_leaf or parent.retains_grad) and parent.grad is child and child is not None:
            return Edge(parent, "attr", "grad")
        return None
    if hasattr(parent, "next_functions"):
        if any(node is child for node, _ in parent.next_functions):
            return Edge(parent, "next", "next_functions")
        if getattr(parent, "variable", None) is child:
            return Edge(parent, "attr", "variable")
        if hasattr(child, "untyped_storage"):
            return Edge(parent, "saved", type(parent).__name__)
    return None


def _step(chain: Sequence[Any], i: int) -> tuple[Step | None, int]:
    """The step from ``chain[i - 1]`` to ``chain[i]`` and how many chain objects it covers."""
    parent, child = chain[i - 1], chain[i]
    after = chain[i + 1] if i + 1 < len(chain) else None
    if isinstance(parent, types.FunctionType):
        if parent.__closure__ is not None and child is parent.__closure__ and i + 2 < len(chain):
            cell, value = chain[i + 1], chain[i + 2]
            position = next((j for j, c in enumerate(child) if c is cell), 0)
            names = parent.__code__.co_freevars
            name = names[position] if position < len(names) else "?"
            del value
            return Step("closure", name), 3
        if parent.__defaults__ is not None and child is parent.__defaults__ and after is not None:
            position = next((j for j, v in enumerate(child) if v is after), 0)
            code = parent.__code__
            names = code.co_varnames[:code.co_argcount][-len(child):]
            return Step("default", names[position] if position < len(names) else "?"), 2
    if isinstance(child, dict) and after is not None and not isinstance(parent, dict):
        try:
            namespace = vars(parent)
            # a class's ``vars()`` is a mappingproxy around the dict gc reports
            own = namespace is child or (isinstance(parent, type)
                                         and any(d is child for d in gc.get_referents(namespace)))
        except TypeError:
            own = False
        if own:
            key = _key_of(child, after)
            return Step("attr", "?" if key is _MISSING else str(key)), 2
    if isinstance(parent, dict):
        key = _key_of(parent, child)
        return (None if key is _MISSING else Step("key", _key_label(key))), 1
    if isinstance(parent, list | tuple):
        found = next((j for j, v in enumerate(parent) if v is child), None)
        return (None if found is None else Step("index", str(found))), 1
    if isinstance(parent, types.CellType | types.MethodType):
        return None, 1
    if isinstance(parent, types.FrameType):
        name = next((str(k) for k, v in parent.f_locals.items() if v is child), "?")
        return Step("local", name), 1
    if isinstance(parent, types.TracebackType):
        return None, 1
    attr = _attribute_of(parent, child)
    return (Step("attr", attr) if attr else Step("object", type(parent).__name__)), 1
