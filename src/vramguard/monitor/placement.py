"""Which GPU a process of a distributed job should be on, from the environment it was launched
with: ``LOCAL_RANK`` (or Slurm's/Open MPI's local rank) and ``CUDA_VISIBLE_DEVICES``.

A rank that never calls ``torch.cuda.set_device(local_rank)`` makes its CUDA context, and often
tensors, on device 0: every rank then holds memory on GPU 0 and rank 0 runs out first
(returnn#1469, OpenEquivariance#136). The monitor's ``cross_device`` rule compares where NVML sees
a process with where this module says it belongs. Pure, except :func:`read_placement`.

Device numbers in ``CUDA_VISIBLE_DEVICES`` are CUDA's order, NVML's are PCI bus order; they agree
on a node of alike GPUs (CUDA breaks speed ties by bus id) and always with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. UUIDs (``GPU-...``, prefixes allowed) are exact; MIG entries are
not judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vramguard.readers.rank import local_rank_from_env, parse_environ


@dataclass(frozen=True, slots=True)
class Placement:
    """What a process's launch environment says about its GPU."""

    pid: int
    local_rank: int | None
    visible: tuple[str, ...] | None  # CUDA_VISIBLE_DEVICES entries; None when unset

    @property
    def expected_token(self) -> str | None:
        """The CUDA_VISIBLE_DEVICES entry (or bare index) it should use; None when the
        environment does not pin one (several visible devices and no local rank)."""
        if self.visible is None:
            return None if self.local_rank is None else str(self.local_rank)
        if len(self.visible) == 1:
            return self.visible[0]  # one device per rank: the launcher pinned it
        if self.local_rank is not None and self.local_rank < len(self.visible):
            return self.visible[self.local_rank]
        return None

    def describe(self) -> str:
        """``LOCAL_RANK=1, CUDA_VISIBLE_DEVICES=0,1``: the evidence, for the alert."""
        parts = []
        if self.local_rank is not None:
            parts.append(f"local rank {self.local_rank}")
        if self.visible is not None:
            parts.append(f"CUDA_VISIBLE_DEVICES={','.join(self.visible)}")
        return ", ".join(parts)


def placement_from_env(pid: int, env: Mapping[str, str]) -> Placement | None:
    """The placement ``env`` implies; None when it says nothing about a GPU."""
    local_rank = local_rank_from_env(env)
    raw = env.get("CUDA_VISIBLE_DEVICES")
    visible = None if raw is None else tuple(p.strip() for p in raw.split(",") if p.strip())
    if local_rank is None and visible is None:
        return None
    return Placement(pid, local_rank, visible)


def read_placement(pid: int) -> Placement | None:
    """The placement of a live process, from ``/proc/PID/environ``; None when unreadable (gone,
    another user's process without privileges, not Linux) or silent."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return placement_from_env(pid, parse_environ(raw))


def expected_index(placement: Placement, devices: Sequence[tuple[int, str | None]]) -> int | None:
    """The NVML index of the device ``placement`` points at, among ``devices`` ((index, uuid)
    pairs); None when it pins none or names one not among them."""
    token = placement.expected_token
    if token is None:
        return None
    if token.isdigit():
        index = int(token)
        return index if any(i == index for i, _ in devices) else None
    if token.startswith("GPU-"):
        matches = [i for i, uuid in devices if uuid is not None and uuid.startswith(token)]
        return matches[0] if len(matches) == 1 else None
    return None  # MIG-... or something else: not judged
