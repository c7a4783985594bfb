"""Where this process sits in a distributed job: its rank, local rank and world size.

Two parts, as everywhere in ``readers/``: :func:`identity_from_env` is pure (it parses an
environment mapping, so tests and ``supervise`` hand it another process's ``/proc/PID/environ``),
and :func:`read_identity` is the thin reader of the live process (``torch.distributed`` when it is
initialised, else this process's environment).

Launchers write different variables; the first complete set wins, in this order:

- torchrun / torch.distributed.launch / Lightning / accelerate: ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``;
- Slurm (``srun``): ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``;
- Open MPI (``mpirun``): ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_LOCAL_RANK``,
  ``OMPI_COMM_WORLD_SIZE``.

torchrun inside a Slurm allocation sets both; its ``RANK`` is the one torch uses, hence the order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

# (source, rank variable, local rank variable, world size variable), in precedence order.
_LAUNCHERS = (
    ("env", "RANK", "LOCAL_RANK", "WORLD_SIZE"),
    ("slurm", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
)


@dataclass(frozen=True, slots=True)
class RankIdentity:
    """A process's place in a job. ``None`` means unknown (not a distributed run, or a launcher
    that does not say), never 0. ``source``: ``torch.distributed``, ``env``, ``slurm``,
    ``openmpi``, or ``None`` when nothing said."""

    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    source: str | None = None

    @property
    def known(self) -> bool:
        """True when the rank is known (a distributed run)."""
        return self.rank is not None

    def labels(self) -> dict[str, str]:
        """``{"rank": "1", "local_rank": "1"}`` for the known parts (metric labels, events)."""
        out = {}
        if self.rank is not None:
            out["rank"] = str(self.rank)
        if self.local_rank is not None:
            out["local_rank"] = str(self.local_rank)
        return out

    def __str__(self) -> str:
        if self.rank is None:
            return "not a distributed run"
        text = f"rank {self.rank}"
        if self.world_size is not None:
            text += f"/{self.world_size}"
        if self.local_rank is not None:
            text += f" (local {self.local_rank})"
        return text


NOT_DISTRIBUTED = RankIdentity()


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None  # a launcher's garbage is "unknown", not a crash in the guard
    return number if number >= 0 else None


def identity_from_env(env: Mapping[str, str]) -> RankIdentity:
    """The identity the launcher's variables in ``env`` describe (pure).

    A launcher counts when its rank variable parses; its local rank and world size are taken
    from the same launcher (``None`` where absent), never mixed with another launcher's.
    """
    for source, rank_var, local_var, size_var in _LAUNCHERS:
        rank = _int(env.get(rank_var))
        if rank is not None:
            return RankIdentity(rank, _int(env.get(local_var)), _int(env.get(size_var)), source)
    return NOT_DISTRIBUTED


def local_rank_from_env(env: Mapping[str, str]) -> int | None:
    """The local rank ``env`` gives, with or without a global rank beside it (pure): the
    launcher's whose rank counts first, else the first local-rank variable that parses."""
    identity = identity_from_env(env)
    if identity.local_rank is not None:
        return identity.local_rank
    for _source, _rank_var, local_var, _size_var in _LAUNCHERS:
        local = _int(env.get(local_var))
        if local is not None:
            return local
    return None


def read_identity(env: Mapping[str, str] | None = None) -> RankIdentity:
    """This process's identity now: ``torch.distributed`` when a default group is initialised
    (its rank and world size are the truth; the local rank still comes from the launcher's
    variables), else the environment. Never imports torch and never raises; cheap (microseconds),
    so callers read it when they need it instead of caching a value that ``init_process_group``
    may change later."""
    environ = os.environ if env is None else env
    from_env = identity_from_env(environ)
    torch = sys.modules.get("torch")
    if torch is None:
        return from_env
    try:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return from_env
        # Lightning's launcher sets LOCAL_RANK without RANK: take the local rank alone too.
        return RankIdentity(int(dist.get_rank()), local_rank_from_env(environ),
                            int(dist.get_world_size()), "torch.distributed")
    except Exception:  # a half-torn-down group must not break a report
        return from_env


def read_process_identity(pid: int) -> RankIdentity | None:
    """The identity another process was launched with, from ``/proc/PID/environ`` (Linux); None
    when it cannot be read (gone, another user's, not Linux). The environment at exec time: a
    process that set ``RANK`` itself later is not seen (launchers set it before exec)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return identity_from_env(parse_environ(raw))


def parse_environ(raw: bytes) -> dict[str, str]:
    """``/proc/PID/environ``'s NUL-separated ``KEY=value`` entries as a dict (pure)."""
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env
