"""``vramguard check TARGET``: call a function N times and say whether memory leaks.

Exit codes: 0 no leak (cache growth and fragmentation are warnings), 1 leak, 2 usage error,
3 environment error (e.g. CUDA asked for but not available), 4 the target raised or exited,
5 inconclusive (too few readings: the message says how many more requests would help).
"""

from __future__ import annotations

import contextlib
import sys

import click

from vramguard.commands._evidence import readings_after_warmup, requests_needed
from vramguard.commands._output import (
    Calls,
    check_device,
    check_report_path,
    finish,
    progress_bar,
    report_target_failure,
    write_report,
)
from vramguard.errors import TargetFailed, UsageError


def _warmup(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"expected --warmup to be a number or 'auto', got {value!r}") from None


@click.command()
@click.argument("target")
@click.option("--requests", "requests", type=int, default=300, show_default=True,
              help="How many times to call the target.")
@click.option("--warmup", default="auto", show_default=True,
              help="Requests to ignore at the start (N or 'auto').")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print one vramguard.check/1 JSON document.")
@click.option("--quiet", is_flag=True, help="No report; the exit code says it all.")
@click.option("--report", "report", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write a self-contained HTML report (chart and suspects) to this file.")
@click.option("--diagnose", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True,
              help="auto: a 30-request diagnosis window after a leak verdict; always: track "
                   "allocation sites over the whole check (slower, no extra window); never: none.")
def check(target: str, requests: int, warmup: str, device: str, as_json: bool, quiet: bool,
          report: str | None, diagnose: str) -> int:
    """Call TARGET (file.py:func or package.module:func) once per request and judge its memory.

    \b
    Exit codes: 0 no leak, 1 leak, 2 usage error, 3 environment error, 4 the target raised
    or exited, 5 inconclusive.
    """
    from vramguard.runner import run_check
    from vramguard.target import exited, load_target, missing_torch

    if requests < 1:
        raise UsageError(f"expected --requests to be a positive number, got {requests}")
    warmup_value = _warmup(warmup)
    check_report_path(report)
    check_device(device)
    diagnosis_requests = 0 if diagnose == "never" else 30
    calls: Calls | None = None
    try:
        # With --json, stdout carries exactly one document: whatever the target prints goes to
        # stderr instead.
        quiet_stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
        with quiet_stdout:
            calls = Calls(load_target(target), requests)
        with quiet_stdout, progress_bar(requests, enabled=not quiet and not as_json, calls=calls,
                                        diagnosis_requests=diagnosis_requests) as progress:
            result = run_check(target, calls, requests=requests, warmup=warmup_value,
                               device=device, progress=progress,
                               diagnosis_requests=diagnosis_requests,
                               track_sites=diagnose == "always")
    except SystemExit as exc:  # the runner passes it on (it is no Exception): still the target's
        done = 0 if calls is None else calls.failed_at
        error = exited(target, exc, completed=done, where=f"on request {done}")
        report_target_failure(error)
        raise error from exc
    except TargetFailed as error:
        torch_missing = missing_torch(error.__cause__) if error.__cause__ else None
        if torch_missing is not None:
            raise torch_missing from error
        report_target_failure(error)
        raise
    if report is not None:
        write_report(result, report)
    needed = requests_needed(requests=requests, warmup=result.warmup,
                             readings=readings_after_warmup(result.samples, result.warmup),
                             auto_warm=warmup_value is None,
                             window=result.verdict.requests_to_clear())
    return finish(result, as_json=as_json, quiet=quiet, needed=needed)
