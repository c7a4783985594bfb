"""Resolve the user's device string ("auto", "cpu", "cuda", "cuda:1", "xpu:0") once, up front."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vramguard._torch import require_torch
from vramguard.errors import EnvironmentProblem, UsageError

_DEVICE_RE = re.compile(r"^(auto|cpu|[a-z][a-z0-9_]*)(?::(\d+))?$")


@dataclass(frozen=True, slots=True)
class Device:
    """A resolved device: ``kind`` is "cpu", "cuda" or another accelerator type; ``index`` its ordinal."""

    kind: str
    index: int | None = None

    @property
    def is_cpu(self) -> bool:
        """True for host memory (no allocator counters: the census is the signal)."""
        return self.kind == "cpu"

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str) -> tuple[str, int | None]:
    """Check the syntax of a device string without importing torch."""
    match = _DEVICE_RE.match(text.strip().lower())
    if not match or (match.group(1) in ("auto", "cpu") and match.group(2) is not None):
        raise UsageError(f"expected a device like auto, cpu, cuda or cuda:1, got {text!r}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def resolve_device(text: str) -> Device:
    """Resolve ``text`` against what this machine has; the best available for "auto"."""
    kind, index = parse_device(text)
    if kind == "cpu":
        return Device("cpu")
    torch = require_torch()
    if kind == "auto":
        if torch.cuda.is_available():
            return Device("cuda", torch.cuda.current_device())
        accelerator = _current_accelerator(torch)
        if accelerator is not None and accelerator != "cuda":
            return Device(accelerator, 0)
        return Device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"device {text!r} asked for, but CUDA is not available on this machine",
                hint="use --device cpu, or install a CUDA build of torch",
            )
        count = torch.cuda.device_count()
        chosen = torch.cuda.current_device() if index is None else index
        if chosen >= count:
            raise EnvironmentProblem(
                f"device {text!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1})"
            )
        return Device("cuda", chosen)
    if _current_accelerator(torch) != kind:
        raise EnvironmentProblem(f"device {text!r} is not available on this machine")
    return Device(kind, 0 if index is None else index)


def _current_accelerator(torch: object) -> str | None:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not accelerator.is_available():
        return None
    current = accelerator.current_accelerator()
    return None if current is None else str(current.type)
