"""One walk of the heap from its named roots, then pure look-ups: why is this object alive?

Modelled on heap-snapshot tools (Eclipse MAT, Chrome DevTools): the question "what keeps this
alive" is answered over a snapshot taken once, never by repeated scans of a live heap.
``take_snapshot`` walks breadth-first from the named roots (module dicts, then thread frames, the
IPython namespace) over ``gc.get_referents`` (in C, one call per level) plus the edges only autograd
knows (tensor -> ``grad_fn`` -> next functions / saved tensors, tensor -> ``.grad``), and keeps the
levels. ``HeapSnapshot.chain(obj)`` then rebuilds a shortest path from a named root to ``obj``
(the leftmost parent on the level above, found by bisection in C), so the same heap gives the same
path whatever the machine's load. The walk is bounded by counts (depth, objects), never by time.

vramguard never finds itself: frames running vramguard's code are not roots and are not walked
through, instances of vramguard's classes are not walked through, and the caller's own containers
are excluded by identity. The snapshot holds strong references to what it visited until
``close()`` (the engine calls it in ``finally``).
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import threading
import time
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Edge", "HeapSnapshot", "Limits", "Source", "take_snapshot"]

# Objects per gc.get_referents call: each call holds the GIL; chunks of this size keep every hold
# short (a few ms; see bench/diagnosis_snapshot.py) so a server's other threads keep running.
_CHUNK = 4096
# After each chunk the walk sleeps this long. Short holds alone were not enough in a server: a
# thread that merely releases the GIL between chunks usually takes it straight back (the waiting
# request thread must first be scheduled), so requests still waited the interpreter's 5 ms switch
# interval, again and again, for the whole walk. A real sleep hands the GIL to whichever request
# thread waits; the walk takes ~0.1-0.4 s longer (one sleep per 4096 objects), off the request path.
_YIELD_S = 0.0002


def pause() -> None:
    """Let the other threads run now (see ``_YIELD_S``); for the diagnosis' long loops."""
    time.sleep(_YIELD_S)
_VRAMGUARD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_DEMO_DIR = os.path.join(_VRAMGUARD_DIR, "demo", "")
# Leaves: nothing they refer to can hold a tensor, so the walk does not keep them.
_LEAVES = (str, bytes, int, float, complex, bool, type(None), types.CodeType,
           types.BuiltinFunctionType, types.WrapperDescriptorType, types.MethodDescriptorType,
           types.GetSetDescriptorType, types.MemberDescriptorType, range, bytearray)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one walk: counts only, so a loaded machine gets the same answer, later."""

    max_depth: int = 24
    max_objects: int = 8_000_000


@dataclass(frozen=True, slots=True)
class Source:
    """A named root container: a module's dict, a thread's frame, the IPython namespace."""

    kind: str  # "module", "frame" or "namespace"
    where: str  # module name, "function() in thread T", "IPython"
    container: Any


@dataclass(frozen=True, slots=True)
class Edge:
    """An edge gc does not report: ``label`` names it (``grad_fn``, ``grad``, a saved tensor)."""

    parent: Any
    kind: str  # "attr" (grad, grad_fn, variable), "next" (next_functions), "saved", "local"
    label: str


def is_own_code(filename: str) -> bool:
    """True for vramguard's own source files (its bundled demo plays the user's service)."""
    path = os.path.abspath(filename)
    return path.startswith(_VRAMGUARD_DIR) and not path.startswith(_DEMO_DIR)


def _is_own_type(cls: type) -> bool:
    module = vars(cls).get("__module__", "")  # a metaclass may shadow it with a descriptor
    if not isinstance(module, str):
        return False
    return (module == "vramguard" or module.startswith("vramguard.")) \
        and not module.startswith("vramguard.demo")


class _Kinds(dict[type, int]):
    """type -> 0 (leaf or vramguard's own: not walked), 1 (walked), 2 (walked, with extra edges)."""

    def __init__(self) -> None:
        super().__init__()
        torch = sys.modules.get("torch")
        self._tensor = None if torch is None else torch.Tensor
        self._node = None if torch is None else torch.autograd.graph.Node

    def __missing__(self, key: type) -> int:
        if issubclass(key, _LEAVES) or _is_own_type(key):
            value = 0
        elif key is types.FrameType or (self._tensor is not None
                                        and issubclass(key, self._tensor)):
            value = 2
        elif self._node is not None and key is not type and issubclass(key, self._node):
            value = 2  # an autograd node: next functions and saved tensors are C++ edges
        else:
            value = 1
        self[key] = value
        return value


class HeapSnapshot:
    """The levels of a breadth-first walk from named roots; see the module docstring."""

    def __init__(self, sources: list[Source], levels: list[list[Any]], depth: dict[int, int],
                 extra: dict[int, Edge], complete: bool, reason: str,
                 aliases: dict[int, Any] | None = None) -> None:
        self.sources = sources
        self._levels = levels
        self._depth = depth
        self._extra = extra
        self._source_of = {id(s.container): s for s in sources}
        self._aliases = aliases or {}
        self._chains: dict[int, list[Any]] = {}
        self.complete = complete
        self.reason = reason  # why the walk stopped ("" when it saw all it could reach)

    @property
    def visited(self) -> int:
        """How many objects the walk reached."""
        return sum(map(len, self._levels))

    def depth(self, obj: Any) -> int | None:
        """How many edges from a named root's container to ``obj`` (None: not reached)."""
        found = self._depth.get(id(self._aliases.get(id(obj), obj)), -1)
        return None if found < 0 else found

    def rank(self, obj: Any) -> tuple[int, int] | None:
        """(depth, place in the walk's level): the walk's order, the same for the same heap
        whatever the order the caller found its objects in (None: not reached)."""
        obj = self._aliases.get(id(obj), obj)
        depth = self._depth.get(id(obj), -1)
        if depth < 0:
            return None
        place = next((i for i, o in enumerate(self._levels[depth]) if o is obj), None)
        return None if place is None else (depth, place)

    def reached(self, obj: Any) -> bool:
        """True when a named root reaches ``obj`` (or, for a saved tensor, its storage view)."""
        return self._depth.get(id(self._aliases.get(id(obj), obj)), -1) >= 0

    def objects(self) -> Iterator[Any]:
        """Every object reached, in walk order (nearest the roots first)."""
        return itertools.chain.from_iterable(self._levels)

    def source(self, container: Any) -> Source | None:
        """The named root whose container is ``container``."""
        return self._source_of.get(id(container))

    def edge(self, child: Any) -> Edge | None:
        """The autograd or frame-local edge that reached ``child``, if it was not gc's."""
        return self._extra.get(id(child))

    def chain(self, obj: Any) -> list[Any] | None:
        """Objects from a root's container to ``obj`` along a shortest path (None: not reached,
        or the heap changed under the walk so that no parent refers to it any more). A saved
        tensor's chain ends at the walk's own unpacking of the same storage view."""
        obj = self._aliases.get(id(obj), obj)
        depth = self._depth.get(id(obj), -1)
        if depth < 0:
            return None
        known = self._chains.get(id(obj))
        if known is not None:
            return list(known)
        chain = [obj]
        while depth > 0:
            child = chain[-1]
            edge = self._extra.get(id(child))
            parent = edge.parent if edge is not None else _leftmost_parent(
                self._levels[depth - 1], child)
            if parent is None:
                return None
            chain.append(parent)
            depth -= 1
        chain.reverse()
        self._chains[id(obj)] = chain
        return list(chain)

    def close(self) -> None:
        """Drop every reference the snapshot holds (the user's objects are theirs again)."""
        for level in self._levels:
            level.clear()
        self._levels.clear()
        self._depth.clear()
        self._extra.clear()
        self._source_of.clear()
        self._aliases.clear()
        self._chains.clear()
        self.sources = []


def _leftmost_parent(level: list[Any], child: Any) -> Any:
    """The first object of ``level`` whose gc referents include ``child`` (bisection in C)."""
    target = id(child)
    for start in range(0, len(level), _CHUNK):
        if target in map(id, gc.get_referents(*level[start:start + _CHUNK])):
            break
        pause()
    else:
        return None
    lo, hi = start, min(start + _CHUNK, len(level))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if target in map(id, gc.get_referents(*level[lo:mid])):
            hi = mid
        else:
            lo = mid
    return level[lo]


def named_sources(modules: dict[str, Any] | None = None, *,
                  frames: bool = True) -> list[Source]:
    """The named roots in a fixed order: the user's modules, the IPython namespace, the user
    frames of other threads and of this one (outermost first), then library modules by name."""
    table = sys.modules if modules is None else modules
    user: list[Source] = []
    library: list[Source] = []
    seen: set[int] = set()
    for name, module in sorted(table.items(), key=lambda item: item[0]):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or id(namespace) in seen:
            continue
        if name == "vramguard" or (name.startswith("vramguard.")
                                   and not name.startswith("vramguard.demo")):
            continue  # vramguard's own state is never a root
        seen.add(id(namespace))
        file = getattr(module, "__file__", None)
        is_user = name == "__main__" or file is None or not is_library(file)
        (user if is_user else library).append(Source("module", name, namespace))
    shell = _ipython_namespace()
    if shell is not None and id(shell) not in seen:
        seen.add(id(shell))
        user.append(Source("namespace", "__main__", shell))
    if frames:
        user.extend(_frame_sources())
    return user + library


_LIBRARY_PREFIXES: list[tuple[str, ...]] = []  # read once: sysconfig.get_paths() is slow


def is_library(file: str) -> bool:
    """True for a file of the stdlib, an installed package or vramguard itself."""
    if not _LIBRARY_PREFIXES:
        import sysconfig

        paths = sysconfig.get_paths()
        _LIBRARY_PREFIXES.append(tuple(sorted({os.path.join(paths[k], "") for k in (
            "stdlib", "platstdlib", "purelib", "platlib")})))
    path = os.path.abspath(file)
    return path.startswith(_LIBRARY_PREFIXES[0]) or is_own_code(path)


def _ipython_namespace() -> dict[str, Any] | None:
    module = sys.modules.get("IPython")
    if module is None:
        return None
    shell = module.get_ipython()
    namespace = getattr(shell, "user_ns", None)
    return namespace if isinstance(namespace, dict) else None


def _frame_sources() -> list[Source]:
    current = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    others: list[Source] = []
    mine: list[Source] = []
    for ident, frame in sorted(sys._current_frames().items(), key=lambda item: item[0] == current):
        thread = names.get(ident, f"thread {ident}")
        stack: list[types.FrameType] = []
        f: types.FrameType | None = frame
        while f is not None:
            stack.append(f)
            f = f.f_back
        for f in reversed(stack):  # outermost first: the caller's variables before its callees'
            if is_own_code(f.f_code.co_filename) or f.f_code.co_filename.startswith("<frozen"):
                continue
            source = Source("frame", f"{f.f_code.co_name}() in thread {thread}", f)
            (mine if ident == current else others).append(source)
        del stack, f
    del frame
    return others + mine


def take_snapshot(targets: Iterable[Any] = (), *, limits: Limits | None = None,
                  sources: list[Source] | None = None, exclude: Iterable[Any] = ()) -> HeapSnapshot:
    """Walk the heap from the named roots, level by level, until every target is reached (all
    of it when ``targets`` is empty) or a bound is met. ``exclude``: the caller's own objects.

    The cycle collector is paused during the walk: the walk allocates containers, and a full
    collection it triggered on a big heap would hold the GIL for 100+ ms (a stall for every other
    thread of a server); it runs again, as before, once the walk ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _walk(targets, limits, sources, exclude)
    finally:
        if enabled:
            gc.enable()


def _walk(targets: Iterable[Any], limits: Limits | None, sources: list[Source] | None,
          exclude: Iterable[Any]) -> HeapSnapshot:
    limits = limits or Limits()
    sources = named_sources() if sources is None else sources
    kinds = _Kinds()
    depth: dict[int, int] = {id(obj): -1 for obj in exclude}
    extra: dict[int, Edge] = {}
    level: list[Any] = []
    for source in sources:
        if id(source.container) not in depth:
            depth[id(source.container)] = 0
            level.append(source.container)
    targets = list(targets)
    pending = {id(t) for t in targets} - depth.keys()
    wanted_all = not pending
    # A saved output is unpacked into a new tensor object each time: such targets are matched
    # by storage and view (``aliases``: id(target) -> the object the walk reached).
    by_view = {key: id(t) for t in targets if (key := _view_key(t)) is not None}
    aliases: dict[int, Any] = {}
    del targets
    levels: list[list[Any]] = []
    total = 0
    reason = ""
    saved_attrs: dict[type, tuple[str, ...]] = {}
    for current in range(limits.max_depth + 1):
        if not level:
            break
        levels.append(level)
        total += len(level)
        for start in range(0, len(level), _CHUNK):
            pending.difference_update(map(id, level[start:start + _CHUNK]))
        if not wanted_all and not pending:
            break
        if current == limits.max_depth:
            reason = f"the walk stopped at depth {limits.max_depth}"
            break
        if total > limits.max_objects:
            reason = f"the walk stopped after {total} objects"
            break
        level = _next_level(level, current + 1, kinds, depth, extra, saved_attrs,
                            (by_view, pending, aliases))
    complete = not reason and (wanted_all or not pending)
    if not reason and not complete:
        reason = "no named root reaches it"
    return HeapSnapshot(sources, levels, depth, extra, complete, reason, aliases)


def _next_level(level: list[Any], number: int, kinds: _Kinds, depth: dict[int, int],
                extra: dict[int, Edge], saved_attrs: dict[type, tuple[str, ...]],
                views: tuple[dict[tuple[Any, ...], int], set[int], dict[int, Any]]) -> list[Any]:
    """The objects one level further from the roots, in a fixed order: gc's referents first,
    then the edges only autograd and running frames know. Works in chunks of ``_CHUNK`` objects:
    every C call is short, so other threads get the GIL between them."""
    by_view, pending, aliases = views
    nxt: list[Any] = []
    special: list[Any] = []
    for start in range(0, len(level), _CHUNK):
        chunk = level[start:start + _CHUNK]
        special.extend(itertools.compress(
            chunk, map((2).__eq__, map(kinds.__getitem__, map(type, chunk)))))
        children = gc.get_referents(*chunk)
        del chunk
        # One big container (a list of 300k records) gives 300k referents: the bookkeeping is
        # chunked too, so no single C call runs over all of them.
        for low in range(0, len(children), _CHUNK):
            part = children[low:low + _CHUNK]
            kept = dict(zip(map(id, part), part, strict=True))
            del part
            fresh = [obj for key, obj in kept.items() if key not in depth and kinds[type(obj)]
                     and not (type(obj) is types.FrameType
                              and is_own_code(obj.f_code.co_filename))]
            kept.clear()
            depth.update(dict.fromkeys(map(id, fresh), number))
            nxt.extend(fresh)
            del fresh
            pause()
        del children
    for obj in special:
        for child, edge in _extra_edges(obj, saved_attrs):
            if id(child) in depth or not kinds[type(child)]:
                continue
            depth[id(child)] = number
            extra[id(child)] = edge
            nxt.append(child)
            if edge.kind == "saved" and by_view:
                key = _view_key(child)
                target = None if key is None else by_view.get(key)
                if target is not None and target in pending:
                    aliases[target] = child
                    pending.discard(target)
    special.clear()
    return nxt


def _view_key(tensor: Any) -> tuple[Any, ...] | None:
    if not hasattr(tensor, "untyped_storage"):
        return None
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if pointer == 0:
        return None
    return (tensor.device, pointer, tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)


def _extra_edges(obj: Any, saved_attrs: dict[type, tuple[str, ...]]) -> list[tuple[Any, Edge]]:
    """The edges gc does not report: autograd's (C++) and a running frame's locals."""
    if isinstance(obj, types.FrameType):
        try:
            local = dict(obj.f_locals)
        except Exception:  # a frame that is being torn down
            return []
        return [(value, Edge(obj, "local", str(name))) for name, value in local.items()]
    out: list[tuple[Any, Edge]] = []
    if hasattr(obj, "next_functions"):  # an autograd node
        for node, _ in obj.next_functions:
            if node is not None:
                out.append((node, Edge(obj, "next", "next_functions")))
        variable = getattr(obj, "variable", None)
        if variable is not None:
            out.append((variable, Edge(obj, "attr", "variable")))
        names = saved_attrs.get(type(obj))
        if names is None:
            names = tuple(n for n in dir(obj) if n.startswith("_saved_"))
            saved_attrs[type(obj)] = names
        for name in names:
            try:
                value = getattr(obj, name)
            except RuntimeError:  # freed by a backward pass
                continue
            values = value if isinstance(value, tuple | list) else (value,)
            out.extend((v, Edge(obj, "saved", type(obj).__name__)) for v in values
                       if hasattr(v, "untyped_storage"))
        return out
    grad_fn = getattr(obj, "grad_fn", None)
    if grad_fn is not None:
        out.append((grad_fn, Edge(obj, "attr", "grad_fn")))
    if obj.is_leaf or obj.retains_grad:  # .grad of a non-leaf warns
        grad = obj.grad
        if grad is not None:
            out.append((grad, Edge(obj, "attr", "grad")))
    return out
