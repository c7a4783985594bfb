"""Reading the memory of the command's process tree: host RSS (psutil) and VRAM (NVML gateway).

The supervisor takes any :class:`Probe`, so a test can hand it its own readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import psutil

from vramguard.readers.rank import read_process_identity
from vramguard.supervise import procs
from vramguard.supervise.events import RankReading, Reading

_EXEC_WITHIN_S = 2.0  # a younger process may not have exec'd yet (see TreeProbe)


class Probe(Protocol):
    """Reads the memory of a process tree."""

    def read(self, tree: Sequence[psutil.Process]) -> Reading:
        """One reading over ``tree`` (the command's process first)."""
        ...


class TreeProbe:
    """Host RSS summed through psutil; VRAM through ``vram(pids)`` (the NVML gateway) if given.

    ``vram`` is None when no ``--max-vram`` was asked for: NVML is then never touched.
    """

    def __init__(self, vram: Callable[[Sequence[int]], int | None] | None = None, *,
                 rank_of: Callable[[int], int | None] | None = None,
                 age: Callable[[psutil.Process], float] | None = None) -> None:
        self.vram = vram
        self._rank_of = rank_of or _rank_from_environ
        self._age = age or _age  # seconds since the process started (injected in tests)
        # pid -> rank (or None): a process's exec-time environment never changes, so each pid
        # is read once; dropped when the pid leaves the tree, so a reused pid is read afresh.
        # Not a None read from a young process: between fork and exec a child still shows its
        # parent's environment (no RANK), and a launcher's rank read there stayed unranked for
        # good (tests/integration/test_supervise_ranks.py, once in a CI run, busy machine).
        self._ranks: dict[int, int | None] = {}

    def read(self, tree: Sequence[psutil.Process]) -> Reading:
        """RSS and VRAM of ``tree``, and per rank when its processes carry a ``RANK``."""
        vram = self.vram([p.pid for p in tree]) if self.vram is not None and tree else None
        return Reading(processes=len(tree), rss=procs.rss(tree), vram=vram,
                       vram_watched=self.vram is not None, ranks=self._by_rank(tree))

    def _settled(self, proc: psutil.Process) -> bool:
        # Whether the process is old enough that its exec, if any, is behind it: a fork's child
        # execs within milliseconds; 2 s leaves room for a loaded machine. (A re-read is always
        # right, so erring young costs one file read per poll, never a wrong label.)
        try:
            return self._age(proc) > _EXEC_WITHIN_S
        except psutil.Error:
            return True

    def _by_rank(self, tree: Sequence[psutil.Process]) -> tuple[RankReading, ...]:
        live = {p.pid for p in tree}
        self._ranks = {pid: rank for pid, rank in self._ranks.items() if pid in live}
        groups: dict[int, list[psutil.Process]] = {}
        for proc in tree:  # parents come before their children in procs.tree's order
            if proc.pid in self._ranks:
                rank = self._ranks[proc.pid]
            else:
                rank = self._rank_of(proc.pid)
                if rank is not None or self._settled(proc):
                    self._ranks[proc.pid] = rank
            if rank is not None:
                groups.setdefault(rank, []).append(proc)
        if len(groups) < 2 and not any(len(g) < len(tree) for g in groups.values()):
            return ()  # one rank owning the whole tree is no breakdown at all
        return tuple(
            RankReading(rank, members[0].pid, len(members), procs.rss(members),
                        None if self.vram is None else self.vram([p.pid for p in members]))
            for rank, members in sorted(groups.items()))


def _age(proc: psutil.Process) -> float:
    return time.time() - proc.create_time()


def _rank_from_environ(pid: int) -> int | None:
    identity = read_process_identity(pid)
    return None if identity is None else identity.rank
