"""The human report: rich in a terminal, plain text when piped or with NO_COLOR."""

from __future__ import annotations

import os
from typing import TextIO

from rich.console import Console

from vramguard.analysis.suspects import Suspect
from vramguard.analysis.verdict import VerdictKind
from vramguard.report import Report
from vramguard.units import format_bytes

_STYLE = {
    VerdictKind.LEAK: "bold red",
    VerdictKind.NO_LEAK: "bold green",
    VerdictKind.INCONCLUSIVE: "bold yellow",
}


def render_check(result: Report, stream: TextIO, *, color: bool | None = None) -> None:
    """Write the report of a check to ``stream``; ``color=None`` decides from the stream.

    ``color=False`` is plain text: no colour *and* no bold or other escape codes (rich's own
    ``no_color`` keeps bold), as NO_COLOR and pipes want; ``None`` is rich when ``stream`` is a
    terminal and ``NO_COLOR`` is unset, plain otherwise.
    """
    if color is None and os.environ.get("NO_COLOR"):
        color = False
    # emoji=False: a report quotes names and source lines, whose ":name:" must stay as written
    # (and rich's emoji table, ~0.5 MiB imported on first use, stays off the heap it watches).
    console = Console(file=stream, no_color=color is False, force_terminal=color,
                      highlight=False, soft_wrap=True, emoji=False)
    verdict = result.verdict
    style = _STYLE.get(verdict.kind, "bold yellow")
    unit = result.unit  # "request" for services, "step" for training (Guard(unit=...))
    console.print(f"[{style}]{verdict.kind.value.upper()}[/] {result.target} on {result.device}"
                  f" after {result.requests} {unit}s (warm-up {result.warmup})")
    console.print(f"  {result.words(verdict.reason)}", markup=False)
    if verdict.growth is not None:
        console.print(f"  growth: {result.words(str(verdict.growth))}", markup=False)
    if verdict.detected_after is not None:
        console.print(f"  detected after {unit} {verdict.detected_after}")
    console.print(f"  memory: {format_bytes(verdict.start_bytes)} -> {format_bytes(verdict.end_bytes)}"
                  f" of {format_bytes(verdict.capacity_bytes)}", markup=False)
    for warning in verdict.warnings:
        console.print(f"  [yellow]warning:[/] {result.words(warning)}")
    if result.suspects:
        console.print("  growing tensors:")
        for rank, suspect in enumerate(result.suspects, 1):
            _render_suspect(console, rank, suspect)
    if result.diagnosis is not None:
        console.print(f"  diagnosis: {str(result.diagnosis).replace('step', unit)}",
                      markup=False)


def _render_suspect(console: Console, rank: int, suspect: Suspect) -> None:
    # One fact per line: a path from a root or a fix is long, and "; "-joined it is unreadable.
    head = f"    {rank}. {suspect.title}"
    if suspect.cause:
        head += f" [{suspect.cause}]"
    console.print(head, markup=False, style="bold")
    facts = []
    if suspect.retained_bytes is not None:
        facts.append(("retains", format_bytes(suspect.retained_bytes)))
    if suspect.allocated_at is not None:
        facts.append(("allocated at", str(suspect.allocated_at)))
    if suspect.held_by is not None:
        facts.append(("held by", suspect.held_by))
    for label, value in facts:
        console.print(f"       {label}: {value}", markup=False)
    if suspect.fix is not None:
        console.print(f"       fix: {suspect.fix}", markup=False, style="green")
