"""Shared output helpers for the check-like commands (check, demo): progress, report, exit code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from vramguard.errors import TargetFailed
from vramguard.reporters.json_report import check_document
from vramguard.reporters.text import render_check
from vramguard.runner import CheckResult

EXIT_NO_LEAK = 0
EXIT_LEAK = 1


@contextmanager
def progress_bar(total: int, *, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("requests", total=total)
        yield lambda done: bar.update(task, completed=done)


def finish(result: CheckResult, *, as_json: bool, quiet: bool) -> int:
    """Print the report (JSON or human) and return the documented exit code."""
    if as_json:
        click.echo(json.dumps(check_document(result), indent=None))
    elif not quiet:
        color = False if os.environ.get("NO_COLOR") else None
        render_check(result, sys.stdout, color=color)
    # Memory outside PyTorch growing per request is a leak too (exit 1); cache growth and
    # fragmentation are warnings (exit 0).
    return EXIT_LEAK if result.verdict.is_leak else EXIT_NO_LEAK


def report_target_failure(error: TargetFailed) -> None:
    """Show the target's traceback and how far it got, then let main() exit with code 4."""
    click.echo(error.traceback_text.rstrip(), err=True)
    click.echo(f"vramguard: {error.completed} request(s) completed before the failure", err=True)
