"""Shared output helpers for the check-like commands (check, demo): progress, report, exit code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from vramguard.errors import TargetFailed
from vramguard.report import Report as CheckResult
from vramguard.reporters.json_report import check_document
from vramguard.reporters.text import render_check

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


def check_report_path(path: str | None) -> None:
    """Refuse a ``--report`` path whose directory does not exist before the (long) check runs."""
    if path is None:
        return
    from pathlib import Path

    from vramguard.errors import UsageError

    if not Path(path).resolve().parent.is_dir():
        raise UsageError(f"expected --report to be a file in an existing directory, got {path!r}")


def write_report(result: CheckResult, path: str) -> None:
    """Write the HTML report (``--report``); an unwritable path is an environment problem."""
    from vramguard.errors import EnvironmentProblem
    from vramguard.reporters.html import write_html

    try:
        write_html(result, path)
    except OSError as error:
        raise EnvironmentProblem(f"could not write the HTML report to {path!r}: {error.strerror}",
                                 hint="pass --report a path in a writable directory") from error
    click.echo(f"vramguard: HTML report written to {path}", err=True)


def report_target_failure(error: TargetFailed) -> None:
    """Show the target's traceback and how far it got, then let main() exit with code 4."""
    click.echo(error.traceback_text.rstrip(), err=True)
    click.echo(f"vramguard: {error.completed} request(s) completed before the failure", err=True)
