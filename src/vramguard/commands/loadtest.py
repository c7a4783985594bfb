"""``vramguard loadtest URL``: drive an endpoint, watch the server's memory, give the verdict.

Exit codes as for ``check``: 0 no leak, 1 leak, 2 usage error, 3 environment error (httpx missing,
server unreachable, status endpoint off or not answering JSON, most requests failing, no fresh
memory reading), 5 inconclusive. A run cut short (Ctrl-C, server gone) still prints the verdict
over what it measured, marked partial; it exits 1 for a leak, else 130 (Ctrl-C) or 3. Sends only
what it is told, to the URL given.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import click

from vramguard.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_LEAK,
    EnvironmentProblem,
    UsageError,
)
from vramguard.units import parse_interval

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vramguard.adapters.load import LoadResult
    from vramguard.analysis.floor import Floor
    from vramguard.analysis.samples import Sample
    from vramguard.analysis.verdict import Verdict

# More failed than answered: whatever memory did, it was not the endpoint's work being measured.
_MOST = 0.5
_LOOKS = 10  # how often the verdict is judged over the load (see judged_over_time)


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"expected a header like 'Name: value', got {value!r}")
        pairs.append((name.strip(), content.strip()))
    return tuple(pairs)


def _bodies(path: Path) -> tuple[bytes, ...]:
    """One JSON body per non-empty line of a .jsonl file (cycled by the load)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"expected --bodies {str(path)!r} to be a readable UTF-8 .jsonl file: "
                         f"{error}") from None
    bodies = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            raise UsageError(f"expected one JSON body per line in --bodies {str(path)!r}, "
                             f"line {number} is not JSON: {line[:60]!r}") from None
        bodies.append(line.encode())
    if not bodies:
        raise UsageError(f"expected --bodies {str(path)!r} to hold at least one JSON line")
    return tuple(bodies)


def _pid_exists(pid: int) -> bool:
    import psutil

    return bool(psutil.pid_exists(pid))


def _require_httpx() -> None:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("loadtest needs httpx, which is not installed",
                                 hint="pip install 'vramguard[loadtest]'") from None


@click.command()
@click.argument("url")
@click.option("-X", "--method", default="GET", show_default=True, help="HTTP method.")
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeatable).")
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Send this file's bytes as the request body.")
@click.option("--body-template", default=None,
              help="A body with {i} (the request's index) and {uuid} (a fresh UUID) filled in "
                   "per request, e.g. '{\"user\": \"u{i}\"}'.")
@click.option("--bodies", "bodies_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .jsonl file: one JSON body per line, sent in turn (cycled).")
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
             body_template: str | None, bodies_file: Path | None, concurrency: int,
             requests: int | None, duration: str | None, status_url: str | None, pid: int | None,
             sample_every: int | None, warmup: str, timeout: str, as_json: bool,
             quiet: bool) -> int:
    """Send requests to URL and judge the server's memory over them.

    \b
    The server must run the vramguard middleware with expose_status=True, or pass --pid
    to read its GPU memory through NVML. Only fresh readings count (a value the status
    shows again is no new reading): use a dense guard (overhead_budget=None) on the
    server for a verdict within a few hundred requests.
    Exit codes: 0 no leak, 1 leak, 2 usage error, 3 environment error, 5 inconclusive.
    """
    _require_httpx()
    import httpx

    from vramguard.adapters.load import Freshness, LoadPlan, pid_reader, run_load, status_reader

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"expected an http:// or https:// URL, got {url!r}")
    if concurrency < 1:
        raise UsageError(f"expected --concurrency to be a positive number, got {concurrency}")
    if requests is not None and duration is not None:
        raise UsageError("give --requests or --duration, not both")
    if requests is not None and requests < 1:
        raise UsageError(f"expected --requests to be a positive number, got {requests}")
    if sum(x is not None for x in (body_file, body_template, bodies_file)) > 1:
        raise UsageError("give one of --body-file, --body-template and --bodies")
    if pid is not None and (pid < 1 or not _pid_exists(pid)):
        raise UsageError(f"expected --pid to be a running process, got {pid}")
    if sample_every is not None and sample_every < 1:
        raise UsageError(f"expected --sample-every to be a positive number, got {sample_every}")
    seconds = parse_interval("--duration", duration) if duration is not None else None
    count = requests if requests is not None or seconds is not None else 200
    every = sample_every or max(1, (count or 1000) // 100)
    warm = None if warmup == "auto" else int(warmup) if warmup.isdigit() else None
    if warmup != "auto" and warm is None:
        raise UsageError(f"expected --warmup to be a number or 'auto', got {warmup!r}")
    if warm is not None and count is not None and warm >= count:
        raise UsageError(f"expected --warmup below --requests ({count}), got {warm}")
    plan = LoadPlan(url=url, method=method.upper(), headers=_headers(headers),
                    body=body_file.read_bytes() if body_file else None, concurrency=concurrency,
                    requests=count, duration=seconds, sample_every=every,
                    timeout=parse_interval("--timeout", timeout), template=body_template,
                    bodies=_bodies(bodies_file) if bodies_file else ())
    status = status_url or urlunsplit((parts.scheme, parts.netloc, "/vramguard/status", "", ""))
    last = [0.0]

    def progress(result: LoadResult) -> None:
        # Display only (at most a line a second); nothing is decided by the clock.
        now = time.monotonic()
        if quiet or now - last[0] < 1.0:
            return
        last[0] = now
        rate = result.completed / result.elapsed if result.elapsed else 0.0
        click.echo(f"loadtest: {result.completed} request{'s' * (result.completed != 1)}, "
                   f"{result.failed} failed, "
                   f"{result.freshness.fresh} fresh memory readings, {rate:.1f}/s", err=True)

    async def go() -> LoadResult:
        async with httpx.AsyncClient(timeout=plan.timeout) as client:
            if pid is not None:
                from vramguard.nvml import Nvml, default_library_path
                reader = pid_reader(pid, Nvml(library_path=default_library_path()).process_vram)
            else:
                reader = status_reader(client, status)
            return await run_load(plan, client, reader, Freshness(), progress)

    result = asyncio.run(go())
    return _judge(result, target=f"{plan.method} {url}",
                  device="server" if pid is None else f"pid {pid}", warm=warm,
                  as_json=as_json, quiet=quiet, status=status if pid is None else None)


def judged_over_time(samples: Sequence[Sample], *, warmup: int, floor: Floor,
                     looks: int = _LOOKS) -> Verdict:
    """The verdict over ``samples`` as one watching the load would have kept it: judged after
    each ``1/looks`` of the readings and at the end, through one
    :class:`~vramguard.analysis.keeper.Keeper`, so a leak the load showed is not lost to a large
    free (or a stretch the window cannot tell) near its end. Bounded by the readings, not the
    clock: the same readings give the same verdict. Pure."""
    from vramguard.analysis.keeper import Keeper
    from vramguard.analysis.verdict import decide

    count = len(samples)
    every = max(1, count // max(1, looks))
    keeper, verdict = Keeper(floor), decide((), warmup=warmup, floor=floor)
    for end in (*range(every, count, every), count):
        seen = samples[:end]
        keeper, verdict = keeper.keep(decide(seen, warmup=warmup, floor=floor), seen)
    return verdict


def _judge(result: LoadResult, *, target: str, device: str, warm: int | None, as_json: bool,
           quiet: bool, status: str | None) -> int:
    """The verdict over the fresh readings, or exit 3 when there is nothing worth judging."""
    from vramguard.analysis.verdict import auto_warmup
    from vramguard.commands._evidence import readings_after_warmup, requests_needed
    from vramguard.commands._output import finish
    from vramguard.runner import CheckResult

    freshness = result.freshness
    if result.completed == 0:
        raise EnvironmentProblem(f"no request completed: {result.stopped or 'none was sent'}")
    by_status = ", ".join(f"{code}: {n}" for code, n in sorted(result.statuses.items()))
    if result.failed > _MOST * result.completed:
        raise EnvironmentProblem(
            f"{result.failed} of {result.completed} requests failed (by status: {by_status}); "
            "no verdict on an endpoint that mostly fails",
            hint="wrong path or method? a body it rejects (422)? try the request with curl")
    if not quiet and result.failed:
        click.echo(f"loadtest: {result.failed} failed responses (by status: {by_status})",
                   err=True)
    if freshness.fresh == 0:
        where = f"from {status}" if status else "from NVML"
        hint = ("is the middleware's status on (expose_status=True)? a sparse guard reads "
                "memory rarely: use overhead_budget=None on the server, or send more requests")
        if status is None:
            hint = ("no GPU listed the pid: is it the process using the GPU (not a parent "
                    "or a worker), and in this pid namespace?")
        raise EnvironmentProblem(
            f"no usable memory reading {where}: none of its {result.reads} reads showed an "
            "allocated-memory value read during the load", hint=hint)
    samples = freshness.samples()
    resolved = auto_warmup(result.completed) if warm is None else warm
    verdict = judged_over_time(samples, warmup=resolved, floor=freshness.floor)
    used = readings_after_warmup(samples, resolved)
    counted = (f"{freshness.fresh} fresh memory readings ({used} after the warm-up) of "
               f"{result.reads} reads; {freshness.stale} repeats of a value already seen ignored")
    if not freshness.dated:
        counted += "; the server does not date its values, so only changed values counted"
    warnings = list(verdict.warnings)
    if result.stopped is not None:
        warnings.insert(0, f"partial: the run stopped early ({result.stopped}); the verdict "
                           f"covers the {result.completed} requests before it")
    verdict = replace(verdict, reason=f"{verdict.reason} [{counted}]", warnings=tuple(warnings))
    check = CheckResult(target=target + (" (partial)" if result.stopped else ""), device=device,
                        requests=result.completed, warmup=resolved, verdict=verdict,
                        suspects=(), samples=samples)
    if not quiet and not as_json:
        click.echo(f"loadtest: {result.completed} requests in {result.elapsed:.1f}s; {counted}",
                   err=True)
    if result.stopped is not None and not quiet:
        click.echo(f"loadtest: partial: {result.stopped}", err=True)
    needed = requests_needed(requests=result.completed, warmup=resolved, readings=used,
                             auto_warm=warm is None, window=verdict.requests_to_clear())
    code = finish(check, as_json=as_json, quiet=quiet, needed=needed)
    if result.stopped is None or code == EXIT_LEAK:
        return code
    # Cut short and no leak seen: not a pass, whatever the verdict over the part says.
    return EXIT_INTERRUPTED if result.interrupted else EXIT_ENVIRONMENT
