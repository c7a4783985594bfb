"""The human report: rich in a terminal, plain text when piped or with NO_COLOR."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console

from vramguard.analysis.verdict import VerdictKind
from vramguard.runner import CheckResult
from vramguard.units import format_bytes

_STYLE = {
    VerdictKind.LEAK: "bold red",
    VerdictKind.NO_LEAK: "bold green",
    VerdictKind.INCONCLUSIVE: "bold yellow",
}


def render_check(result: CheckResult, stream: TextIO, *, color: bool | None = None) -> None:
    """Write the report of a check to ``stream``; ``color=None`` decides from the stream."""
    console = Console(file=stream, no_color=color is False, force_terminal=color or None,
                      highlight=False, soft_wrap=True)
    verdict = result.verdict
    style = _STYLE.get(verdict.kind, "bold yellow")
    console.print(f"[{style}]{verdict.kind.value.upper()}[/] {result.target} on {result.device}"
                  f" after {result.requests} requests (warm-up {result.warmup})")
    console.print(f"  {verdict.reason}", markup=False)
    if verdict.growth is not None:
        console.print(f"  growth: {verdict.growth}", markup=False)
    if verdict.detected_after is not None:
        console.print(f"  detected after request {verdict.detected_after}")
    console.print(f"  memory: {format_bytes(verdict.start_bytes)} -> {format_bytes(verdict.end_bytes)}"
                  f" of {format_bytes(verdict.capacity_bytes)}", markup=False)
    for warning in verdict.warnings:
        console.print(f"  [yellow]warning:[/] {warning}")
    if result.suspects:
        console.print("  growing tensors:")
        for rank, suspect in enumerate(result.suspects, 1):
            console.print(f"    {rank}. {suspect}", markup=False)
