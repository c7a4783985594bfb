"""Autograd graphs as the diagnosis sees them: saved tensors the window made (exemplars for
tensors only C++ holds) and how many graph nodes live tensors keep (growth without tensor bytes).

Graph nodes are host memory outside tensor storage: ``loss_sum += loss`` after ``backward()``
frees the saved tensors but keeps every step's nodes chained to ``loss_sum``. The census sees no
tensor bytes grow; ``count_nodes`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GraphCount", "count_nodes", "freed", "graph_holders"]


@dataclass(frozen=True, slots=True)
class GraphCount:
    """Live autograd nodes reachable from live tensors' ``grad_fn`` (and ``.grad``'s).

    ``largest``: the most nodes one tensor's graph holds (new since ``before`` when given);
    ``backwarded``: some node's saved tensors were freed by a backward pass (the code trains);
    ``node_ids``: the nodes' ids (alive while a graph holds them), for the next count.
    """

    nodes: int
    largest: int
    backwarded: bool
    node_ids: frozenset[int] = field(default=frozenset(), repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.nodes} autograd nodes (largest graph {self.largest})"


def _next(node: Any) -> Iterable[Any]:
    return (n for n, _ in node.next_functions if n is not None)


def count_nodes(tensors: Iterable[Any], *, keep: list[Any] | None = None,
                holders: int = 5, before: GraphCount | None = None) -> GraphCount:
    """Count the distinct nodes of the graphs ``tensors`` reach. ``keep``: filled with up to
    ``holders`` tensors whose graphs gained the most nodes since ``before`` (all nodes count as
    new without it), most first (for the caller's path search; the caller clears it). Tensors
    whose ``grad_fn`` no other graph reaches (``loss_sum``, not a tensor inside its history)
    claim shared nodes first. Nodes stay alive while a graph holds them, so an id seen before
    is the same node."""
    old = before.node_ids if before is not None else frozenset()
    tensors = [t for t in tensors if t.grad_fn is not None or (t.is_leaf and t.grad is not None)]
    seen: set[int] = set()
    hold: list[Any] = []  # ids in ``seen`` stay valid while their nodes are alive
    sizes: list[tuple[int, int]] = []
    backwarded = False
    try:
        inner: set[int] = set()
        stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
        while stack:
            node = stack.pop()
            for child in _next(node):
                if id(child) not in inner:
                    inner.add(id(child))
                    hold.append(child)
                    stack.append(child)
        tensors.sort(key=lambda t: t.grad_fn is not None and id(t.grad_fn) in inner)
        for position, tensor in enumerate(tensors):
            roots = [tensor.grad_fn]
            if tensor.is_leaf and tensor.grad is not None:
                roots.append(tensor.grad.grad_fn)
            stack = [n for n in roots if n is not None and id(n) not in seen]
            mine = 0
            while stack:
                node = stack.pop()
                if id(node) in seen:
                    continue
                seen.add(id(node))
                hold.append(node)
                mine += id(node) not in old
                if not backwarded and freed(node):
                    backwarded = True
                stack.extend(n for n in _next(node) if id(n) not in seen)
            if mine:
                sizes.append((mine, position))
        sizes.sort(key=lambda pair: (-pair[0], pair[1]))
        if keep is not None:
            keep.extend(tensors[position] for _, position in sizes[:holders])
        return GraphCount(len(seen), sizes[0][0] if sizes else 0, backwarded, frozenset(seen))
    finally:
        hold.clear()
        tensors.clear()


_SAVED_NAMES: dict[type, tuple[str, ...]] = {}  # node type -> saved attributes (dir() is slow)


def freed(node: Any) -> bool:
    """True when a backward pass already freed this node's saved tensors."""
    kind = type(node)
    names = _SAVED_NAMES.get(kind)
    if names is None:
        names = _SAVED_NAMES[kind] = tuple(n for n in dir(node) if n.startswith("_saved_"))
    for name in names:  # scalars saved beside tensors are never freed: try each
        try:
            getattr(node, name)
        except RuntimeError:
            return True
    return False


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
