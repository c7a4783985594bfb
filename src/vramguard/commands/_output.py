"""Shared output helpers for the check-like commands (check, demo, loadtest): progress, report,
exit code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from vramguard.analysis.verdict import VerdictKind
from vramguard.commands._evidence import inconclusive_message
from vramguard.errors import EXIT_INCONCLUSIVE, EXIT_LEAK, EXIT_OK, TargetFailed
from vramguard.report import Report as CheckResult
from vramguard.reporters.json_report import check_document
from vramguard.reporters.text import render_check

EXIT_NO_LEAK = EXIT_OK


class Calls:
    """Wraps the target so the command sees every call: the progress bar's diagnosis phase (the
    runner's own callback stops at the last request) and, for a ``SystemExit``, how far it got."""

    def __init__(self, function: Callable[[int], Any], requests: int) -> None:
        self._function = function
        self.requests = requests
        # Calls begun. Counted before the call: an ``async def`` target returns its coroutine at
        # once (the runner awaits it), so "begun" is what both kinds of target can tell.
        self.started = 0
        self.on_extra: Callable[[int], None] | None = None

    def __call__(self, index: int) -> Any:
        self.started += 1
        if self.started > self.requests and self.on_extra is not None:
            self.on_extra(self.started - self.requests)
        return self._function(index)

    @property
    def failed_at(self) -> int:
        """The index of the call in progress (the one that failed, when one did)."""
        return max(0, self.started - 1)


@contextmanager
def progress_bar(total: int, *, enabled: bool, calls: Calls | None = None,
                 diagnosis_requests: int = 0) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing.

    With ``calls``, the calls past ``total`` (the diagnosis window after a leak verdict) move a
    second bar, so the screen does not sit at 100% while the diagnosis runs.
    """
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    # On stderr, the terminal tested above: stdout carries the report (and may be a pipe).
    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("requests", total=total)
        diagnosis: list[Any] = []

        def extra(done: int) -> None:
            if not diagnosis:
                bar.update(task, description="requests (leak found)")
                diagnosis.append(bar.add_task("diagnosis: allocation sites, reference paths",
                                              total=diagnosis_requests or None))
            bar.update(diagnosis[0], completed=done)
            if done == diagnosis_requests:
                bar.update(diagnosis[0], description="diagnosis: analysing the heap")
            if done in (1, diagnosis_requests):
                bar.refresh()  # each phase is drawn at least once, however short it is

        if calls is not None:
            calls.on_extra = extra
        yield lambda done: bar.update(task, completed=done)


def exit_code(result: CheckResult) -> int:
    """The documented exit code of a verdict: 1 leak, 5 inconclusive, 0 otherwise."""
    # Memory outside PyTorch growing per request is a leak too (exit 1); cache growth and
    # fragmentation are warnings (exit 0); too little evidence is never a pass (exit 5).
    if result.verdict.is_leak:
        return EXIT_LEAK
    if result.verdict.kind is VerdictKind.INCONCLUSIVE:
        return EXIT_INCONCLUSIVE
    return EXIT_OK


def finish(result: CheckResult, *, as_json: bool, quiet: bool,
           needed: int | None = None) -> int:
    """Print the report (JSON or human) and return the documented exit code.

    ``needed``: for an inconclusive verdict, the requests a rerun should make (see
    :mod:`~vramguard.commands._evidence`); said on stderr, whatever the output format.
    """
    if as_json:
        click.echo(json.dumps(check_document(result), indent=None))
    elif not quiet:
        color = False if os.environ.get("NO_COLOR") else None
        render_check(result, sys.stdout, color=color)
    sys.stdout.flush()
    code = exit_code(result)
    if code == EXIT_INCONCLUSIVE:
        message = inconclusive_message(result.verdict.reason, requests=result.requests,
                                       needed=needed, too_slow=result.verdict.floor_rate > 0)
        click.echo(f"vramguard: {message}", err=True)
    return code


# Device types torch knows (torch.device accepts these names); anything else is a typo, a usage
# error, where a known type this machine lacks is an environment problem (exit 3).
_DEVICE_TYPES = frozenset({"auto", "cpu", "cuda", "xpu", "mps", "hpu", "mtia", "npu", "xla",
                           "ipu", "maia", "privateuseone"})


def check_device(text: str) -> None:
    """Refuse an ill-formed or unknown device (exit 2) before anything is imported or run."""
    from vramguard.errors import UsageError
    from vramguard.readers.device import parse_device

    kind, _index = parse_device(text)
    if kind not in _DEVICE_TYPES:
        raise UsageError(f"expected a device like auto, cpu, cuda or cuda:1, got {text!r}",
                         hint=f"{kind!r} is not a device type PyTorch knows")


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
    """Show the target's traceback (vramguard's own frames trimmed) and how far it got, then let
    main() exit with code 4."""
    from vramguard.target import target_traceback

    cause = error.__cause__
    text = target_traceback(cause) if cause is not None else error.traceback_text
    click.echo(text.rstrip(), err=True)
    click.echo(f"vramguard: {error.completed} request(s) completed before the failure", err=True)
