"""``vramguard demo``: watch vramguard find a leak in a bundled inference service."""

from __future__ import annotations

import click

from vramguard.commands._evidence import readings_after_warmup, requests_needed
from vramguard.commands._output import (
    Calls,
    check_device,
    check_report_path,
    finish,
    progress_bar,
    write_report,
)
from vramguard.demo.service import LEAKS
from vramguard.errors import EXIT_INCONCLUSIVE, EXIT_OK


@click.command()
@click.option("--leak", type=click.Choice(LEAKS), default="graph", show_default=True,
              help="Which leak the demo service has ('none' for the fixed service).")
@click.option("--requests", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the vramguard.check/1 document.")
@click.option("--report", "report", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write a self-contained HTML report to this file.")
def demo(leak: str, requests: int, device: str, as_json: bool, report: str | None) -> int:
    """Serve a small model with a classic leak and let vramguard check it.

    Exits 0 whatever it finds (the demo is for reading, not for CI), except 5 when the verdict
    is inconclusive (too few requests): that is never shown as a pass.
    """
    from vramguard.demo.service import build_service
    from vramguard.readers.device import resolve_device
    from vramguard.runner import run_check

    check_device(device)
    check_report_path(report)
    resolved = resolve_device(device)
    handle = build_service(leak, device=str(resolved))
    if not as_json:
        click.echo(f"vramguard demo: a classifier service with leak={leak!r} on {resolved}, "
                   f"{requests} requests", err=True)
    target = f"vramguard.demo.service:handle (leak={leak})"
    calls = Calls(handle, requests)
    with progress_bar(requests, enabled=not as_json, calls=calls,
                      diagnosis_requests=30) as progress:
        result = run_check(target, calls, requests=requests, device=str(resolved),
                           progress=progress)
    if report is not None:
        write_report(result, report)
    needed = requests_needed(requests=requests, warmup=result.warmup,
                             readings=readings_after_warmup(result.samples, result.warmup),
                             auto_warm=True, window=result.verdict.requests_to_clear())
    code = finish(result, as_json=as_json, quiet=False, needed=needed)
    return EXIT_INCONCLUSIVE if code == EXIT_INCONCLUSIVE else EXIT_OK
