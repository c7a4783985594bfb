"""Suspects: tensor groups that grew, with the diagnosis fields the diagnosis step fills in."""

from __future__ import annotations

from dataclasses import dataclass

from vramguard.units import format_bytes


@dataclass(frozen=True, slots=True)
class TensorGrowth:
    """A group of alike tensors (device, dtype, shape, grad) and how much it grew."""

    device: str
    dtype: str
    shape: tuple[int, ...]
    requires_grad: bool
    grad_fn: str | None
    count_growth: int
    bytes_growth: int
    in_graph: bool = False

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        extra = f", saved by {self.grad_fn}" if self.in_graph else (
            f", grad_fn={self.grad_fn}" if self.grad_fn else "")
        return (f"Tensor({shape}, {self.dtype}, {self.device}{extra}): "
                f"{self.count_growth:+d} tensors, {format_bytes(self.bytes_growth, signed=True)}")


@dataclass(frozen=True, slots=True)
class Site:
    """Where a tensor was allocated: the innermost frame in user code."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}()"


@dataclass(frozen=True, slots=True)
class Suspect:
    """One growing tensor group and, once diagnosed, where it was born and what keeps it alive.

    Fields the diagnosis has not filled are ``None``: never invented. ``graph_nodes``: autograd
    nodes that grew over the diagnosis window (growth outside tensor storage), when that is the
    suspect.
    """

    tensors: TensorGrowth | None  # None: growth outside this process's tensors (workers, graphs)
    retained_bytes: int | None = None
    allocated_at: Site | None = None
    stack: tuple[Site, ...] | None = None
    held_by: str | None = None
    cause: str | None = None  # a vramguard.diagnosis.Cause (a StrEnum) once diagnosed
    fix: str | None = None
    graph_nodes: int | None = None

    def __str__(self) -> str:
        what = "child processes" if self.graph_nodes is None else \
            f"{self.graph_nodes:+d} autograd graph nodes"
        parts = [str(self.tensors) if self.tensors is not None else what]
        if self.cause:
            parts.append(f"cause: {self.cause}")
        if self.allocated_at:
            parts.append(f"allocated at {self.allocated_at}")
        if self.held_by:
            parts.append(f"held by {self.held_by}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "; ".join(parts)
