"""``vramguard loadtest URL``: drive an endpoint, watch the server's memory, give the verdict.

Exit codes as for ``check``: 0 no leak, 1 leak, 2 usage error, 3 environment error (server
unreachable, status endpoint off, NVML missing). Sends only what it is told, to the URL given.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click

from vramguard.errors import UsageError
from vramguard.units import parse_duration


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"expected a header like 'Name: value', got {value!r}")
        pairs.append((name.strip(), content.strip()))
    return tuple(pairs)


@click.command()
@click.argument("url")
@click.option("-X", "--method", default="GET", show_default=True, help="HTTP method.")
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeatable).")
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Send this file's bytes as the request body.")
@click.option("--concurrency", type=int, default=1, show_default=True,
              help="Requests in flight at once.")
@click.option("--requests", "requests", type=int, default=None,
              help="How many requests to send (default 200, unless --duration).")
@click.option("--duration", default=None, help="Send for this long instead (30s, 5m).")
@click.option("--status-url", default=None,
              help="Where to read the server's memory (default: /vramguard/status on URL's host).")
@click.option("--pid", type=int, default=None,
              help="Read this process's GPU memory through NVML instead of the status endpoint.")
@click.option("--sample-every", type=int, default=None,
              help="Read memory every N completed requests (default: about 100 readings).")
@click.option("--warmup", default="auto", show_default=True, help="Requests to ignore (N or auto).")
@click.option("--timeout", default="30s", show_default=True, help="Per-request timeout.")
@click.option("--json", "as_json", is_flag=True, help="Print one vramguard.check/1 JSON document.")
@click.option("--quiet", is_flag=True, help="No report; the exit code says it all.")
def loadtest(url: str, method: str, headers: tuple[str, ...], body_file: Path | None,
             concurrency: int, requests: int | None, duration: str | None, status_url: str | None,
             pid: int | None, sample_every: int | None, warmup: str, timeout: str, as_json: bool,
             quiet: bool) -> int:
    """Send requests to URL and judge the server's memory over them.

    \b
    The server must run the vramguard middleware with expose_status=True, or pass --pid
    to read its GPU memory through NVML. Use a dense guard (overhead_budget=None) on the
    server for a verdict within a few hundred requests.
    Exit codes: 0 no leak, 1 leak, 2 usage error, 3 environment error.
    """
    import httpx

    from vramguard.adapters.load import LoadPlan, LoadResult, pid_reader, run_load, status_reader
    from vramguard.analysis.verdict import auto_warmup, decide
    from vramguard.commands._output import finish
    from vramguard.runner import CheckResult

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"expected an http:// or https:// URL, got {url!r}")
    if concurrency < 1:
        raise UsageError(f"expected --concurrency to be a positive number, got {concurrency}")
    if requests is not None and duration is not None:
        raise UsageError("give --requests or --duration, not both")
    if requests is not None and requests < 1:
        raise UsageError(f"expected --requests to be a positive number, got {requests}")
    seconds = parse_duration(duration) if duration is not None else None
    count = requests if requests is not None or seconds is not None else 200
    every = sample_every or max(1, (count or 1000) // 100)
    if every < 1:
        raise UsageError(f"expected --sample-every to be a positive number, got {every}")
    warm = None if warmup == "auto" else int(warmup) if warmup.isdigit() else None
    if warmup != "auto" and warm is None:
        raise UsageError(f"expected --warmup to be a number or 'auto', got {warmup!r}")
    plan = LoadPlan(url=url, method=method.upper(), headers=_headers(headers),
                    body=body_file.read_bytes() if body_file else None, concurrency=concurrency,
                    requests=count, duration=seconds, sample_every=every,
                    timeout=parse_duration(timeout))
    status = status_url or urlunsplit((parts.scheme, parts.netloc, "/vramguard/status", "", ""))
    last = [0.0]

    def progress(result: LoadResult) -> None:
        now = time.monotonic()
        if quiet or now - last[0] < 1.0:
            return
        last[0] = now
        rate = result.completed / result.elapsed if result.elapsed else 0.0
        failed = sum(result.failures.values())
        click.echo(f"loadtest: {result.completed} requests, {failed} failed, {rate:.1f}/s",
                   err=True)

    async def go() -> LoadResult:
        async with httpx.AsyncClient(timeout=plan.timeout) as client:
            if pid is not None:
                from vramguard.nvml import Nvml
                reader = pid_reader(pid, Nvml().process_vram)
            else:
                reader = status_reader(client, status)
            return await run_load(plan, client, reader, progress)

    result = asyncio.run(go())
    if not quiet and result.failures:
        click.echo(f"loadtest: failed responses by status: {result.failures}", err=True)
    samples = tuple(result.samples)
    resolved = auto_warmup(result.completed) if warm is None else warm
    verdict = decide(samples, warmup=resolved)
    check = CheckResult(target=f"{plan.method} {url}", device="server" if pid is None else
                        f"pid {pid}", requests=result.completed, warmup=resolved, verdict=verdict,
                        suspects=(), samples=samples)
    if not quiet and not as_json:
        click.echo(f"loadtest: {result.completed} requests in {result.elapsed:.1f}s, "
                   f"{len(samples)} memory readings", err=True)
    sys.stdout.flush()
    return finish(check, as_json=as_json, quiet=quiet)
