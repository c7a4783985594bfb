"""Why a tensor is alive: the reference path from a named root to it, over one heap snapshot.

The pure half (``Root``, ``Step``, ``ReferencePath``) lives in ``refpath``; the walk in
``snapshot``; naming in ``naming``. ``Retainers`` takes one snapshot for a set of targets and answers
for each of them; ``PathFinder.find`` is the one-target form. Tensors that only an autograd graph
holds are reached through the graph's edges in the snapshot (``graphs`` finds them as exemplars).

Everything holds strong references only while it runs and drops them in ``close()`` /
``finally``: the diagnosis must not become the leak.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vramguard.diagnosis.naming import describe as describe_object
from vramguard.diagnosis.naming import name_chain
from vramguard.diagnosis.refpath import ReferencePath, Root, Step
from vramguard.diagnosis.snapshot import HeapSnapshot, Limits, named_sources, take_snapshot

__all__ = ["Limits", "PathFinder", "PathResult", "ReferencePath", "Retainers", "Root", "Step"]


@dataclass(frozen=True, slots=True)
class PathResult:
    """What a search found: a path, or ``None`` with the reason (and whether cycles were seen)."""

    path: ReferencePath | None
    reason: str
    cycle: bool = False
    containers: tuple[int, ...] = ()  # ids of objects on the path (for the hook check)
    explored: int = 0


class Retainers:
    """Shortest retainer paths for ``targets`` from one snapshot (``close()`` when done).

    ``modules`` (default ``sys.modules``) is injectable for tests, and ``frames=False`` leaves
    thread frames out of the roots; ``exclude``: the caller's own containers (never on a path).
    """

    def __init__(self, targets: Iterable[Any], *, limits: Limits | None = None,
                 modules: dict[str, Any] | None = None, exclude: Iterable[Any] = (),
                 frames: bool = True) -> None:
        targets = list(targets)
        self._exclude = [*exclude, targets]
        self.snapshot: HeapSnapshot = take_snapshot(
            targets, limits=limits, sources=named_sources(modules, frames=frames),
            exclude=self._exclude)
        targets.clear()

    def chain(self, target: Any) -> list[Any] | None:
        """The objects from a root's container to ``target`` (None: no named root reaches it)."""
        return self.snapshot.chain(target)

    def find(self, target: Any, describe: str | None = None) -> PathResult:
        """The shortest path from a named root to ``target``."""
        chain = self.snapshot.chain(target)
        explored = self.snapshot.visited
        if chain is None or len(chain) < 2:
            cycle = self._in_cycle(target)
            if self.snapshot.reached(target) and chain is None:
                reason = "the heap changed during the walk: no parent refers to it any more"
            elif self.snapshot.reason and self.snapshot.reason != "no named root reaches it":
                reason = f"no root found: {self.snapshot.reason}"
            elif cycle:
                reason = "no named root holds it: only reference cycles or objects gc cannot see"
            else:
                reason = "no named root holds it: only objects gc cannot see (C extensions)"
            return PathResult(None, reason, cycle, explored=explored)
        path = name_chain(self.snapshot, chain, describe)
        containers = tuple(id(obj) for obj in chain[1:-1])
        return PathResult(path, "found", False, containers, explored=explored)

    def _in_cycle(self, target: Any) -> bool:
        # Referrers outside the snapshot's roots: a cycle (or a C holder) keeps it. One heap
        # scan, for unreached targets only.
        referrers = gc.get_referrers(target)
        try:
            own = {id(o) for o in self._exclude} | {id(referrers)}
            return any(id(r) not in own for r in referrers)
        finally:
            del referrers

    def close(self) -> None:
        """Drop the snapshot's references."""
        self.snapshot.close()
        self._exclude.clear()


class PathFinder:
    """One-target form of :class:`Retainers`: a snapshot per ``find`` (tests and one-offs)."""

    def __init__(self, limits: Limits | None = None, *,
                 modules: dict[str, Any] | None = None, frames: bool = True) -> None:
        self.limits = limits or Limits()
        self._modules = modules
        self._frames = frames

    def find(self, target: Any, describe: str | None = None, *,
             ignore: Iterable[Any] = ()) -> PathResult:
        """The shortest path from a named root to ``target``; ``ignore``: objects never on it."""
        retainers = Retainers([target], limits=self.limits, modules=self._modules,
                              exclude=ignore, frames=self._frames)
        try:
            return retainers.find(target, describe or describe_object(target))
        finally:
            retainers.close()
