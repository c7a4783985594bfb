"""Context for the fix, read from the objects on one path: who stores into the root, which holder
has a ``reset()``, which autograd graph was already backwarded (the code trains).

Touches only the objects on a chain and the code objects of user modules; pure otherwise.
"""

from __future__ import annotations

import dis
import types
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["resettable_holder", "storing_function", "trained"]

_ADDERS = frozenset({"append", "extend", "add", "insert", "update", "setdefault", "appendleft",
                     "put", "put_nowait", "__setitem__"})
_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FAST",
                    "LOAD_ATTR", "LOAD_METHOD"})
_STORES = frozenset({"STORE_GLOBAL", "STORE_NAME", "STORE_DEREF", "STORE_ATTR", "STORE_FAST"})
_PLAIN = (dict, list, tuple, set, frozenset, types.ModuleType, types.FunctionType,
          types.CellType, types.FrameType)


def _stores(code: types.CodeType, variable: str) -> bool:
    """True when ``code`` appends/assigns into ``variable`` (``x.append``, ``x[k] =``, ``x = ...``,
    ``self.x +=``)."""
    if variable not in code.co_names and variable not in code.co_freevars \
            and variable not in code.co_varnames and variable not in code.co_cellvars:
        return False
    instructions = list(dis.get_instructions(code))
    for i, ins in enumerate(instructions):
        if ins.argval != variable:
            continue
        if ins.opname in _STORES and ins.opname != "STORE_FAST":
            return True
        if ins.opname in _LOADS:
            following = instructions[i + 1:i + 5]
            if following and following[0].opname in ("LOAD_METHOD", "LOAD_ATTR") \
                    and following[0].argval in _ADDERS:
                return True
            if any(f.opname == "STORE_SUBSCR" for f in following):
                return True
            if any(f.opname == "BINARY_OP" and "=" in f.argrepr for f in following[:3]):
                return True  # ``x += y`` on an attribute or a global
    return False


def _codes(namespace: dict[str, Any]) -> Iterator[tuple[types.CodeType, str]]:
    """Code objects defined in a module namespace (functions, methods, nested functions)."""
    todo: list[tuple[types.CodeType, str]] = []
    for value in list(namespace.values()):
        if isinstance(value, types.FunctionType):
            todo.append((value.__code__, value.__qualname__))
        elif isinstance(value, type) and value.__module__ == namespace.get("__name__"):
            for member in list(vars(value).values()):
                function = getattr(member, "__func__", member)
                if isinstance(function, types.FunctionType):
                    todo.append((function.__code__, function.__qualname__))
    seen: set[int] = set()
    while todo:
        code, name = todo.pop(0)
        if id(code) in seen:
            continue
        seen.add(id(code))
        yield code, name
        todo.extend((c, c.co_qualname) for c in code.co_consts if isinstance(c, types.CodeType))


def storing_function(namespaces: Iterable[dict[str, Any]], variable: str | None,
                     prefer: Sequence[tuple[str, str]] = ()) -> str | None:
    """The qualified name of the user function whose code stores into ``variable``.

    ``prefer``: (file, function) pairs of the allocation stack, tried first, innermost first.
    """
    if not variable:
        return None
    found: list[tuple[types.CodeType, str]] = []
    for namespace in namespaces:
        found.extend(pair for pair in _codes(namespace) if _stores(pair[0], variable))
    for file, function in prefer:
        for code, name in found:
            if code.co_filename == file and code.co_name == function:
                return name
    return found[0][1] if found else None


def resettable_holder(chain: Sequence[Any]) -> tuple[int, str] | None:
    """(index in ``chain``, method) of the object nearest the tensor that empties itself: a
    metric or meter with ``reset()``, an ``functools.lru_cache`` wrapper with ``cache_clear()``."""
    for index in range(len(chain) - 2, 0, -1):
        obj = chain[index]
        if isinstance(obj, _PLAIN) or hasattr(obj, "untyped_storage") or isinstance(obj, type):
            continue
        for method in ("reset", "cache_clear"):
            if callable(getattr(type(obj), method, None)):
                return index, method
    return None


def trained(tensors: Iterable[Any], *, budget: int = 2_000) -> bool:
    """True when a backward pass freed saved tensors in the graphs of ``tensors`` (the step
    trains: the fix is ``.item()``/``.detach()``, never inference mode). Bounded by ``budget``
    nodes."""
    from vramguard.diagnosis.graphs import freed

    seen: set[int] = set()
    stack = [t.grad_fn for t in tensors if getattr(t, "grad_fn", None) is not None]
    hold: list[Any] = []
    try:
        while stack and len(seen) < budget:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            hold.append(node)
            if freed(node):
                return True
            stack.extend(n for n, _ in node.next_functions if n is not None)
        return False
    finally:
        hold.clear()
        stack.clear()
