"""``vramguard ranks --store HOST:PORT``: every rank's leak summary, read from the job's store.

A read-only store client: it connects to the ``TCPStore`` the job already runs (torchrun's
``MASTER_ADDR:MASTER_PORT``), reads the summaries that ``vramguard.distributed.share`` publishes,
and never writes, waits on a key, or joins a collective.

Exit codes: 0 no rank leaks (every rank reported a fresh, conclusive verdict), 1 a rank leaks,
2 usage error, 3 the store is unreachable (or torch is missing), 5 inconclusive (no rank flagged,
but some rank is stale, missing or has too little evidence yet).
"""

from __future__ import annotations

import json
import os

import click

from vramguard.errors import EXIT_INCONCLUSIVE, EXIT_LEAK, EXIT_OK, EnvironmentProblem


@click.command()
@click.option("--store", "address", required=True, metavar="HOST:PORT",
              help="The job's store, e.g. MASTER_ADDR:MASTER_PORT of a torchrun job.")
@click.option("--json", "as_json", is_flag=True, help="Print one vramguard.ranks/1 JSON document.")
@click.option("--timeout", default="5s", show_default=True,
              help="Give up on the store (connecting, and reading all ranks) after this long.")
@click.option("--stale-after", default=None,
              help="A summary older than this is stale (default: 3 of the rank's intervals).")
def ranks(address: str, as_json: bool, timeout: str, stale_after: str | None) -> int:
    """Show which ranks of a distributed job leak (their own verdict, or growth far above the
    job's median), and which are stale or missing.

    \b
    Exit codes: 0 no rank leaks, 1 a rank leaks, 2 usage error, 3 store unreachable,
    5 inconclusive (stale, missing or undecided ranks, none flagged).
    """
    from vramguard.distributed.publish import seconds
    from vramguard.distributed.ranktable import read_table
    from vramguard.distributed.store import connect, parse_address

    # c10d logs each failed connection attempt with a C++ stack trace on stderr; the one-line
    # error below says it all. Read by c10 when torch loads, so set before connect() imports it.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    parse_address(address)  # a usage error before any connection attempt
    timeout_s = seconds(timeout, name="--timeout")
    stale_s = None if stale_after is None else seconds(stale_after, name="--stale-after")
    store = connect(address, timeout_s=timeout_s)
    try:
        table = read_table(store, timeout_s=timeout_s, stale_after=stale_s)
    except Exception as exc:  # the store went away mid-read
        raise EnvironmentProblem(f"reading the store at {address} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps(table.to_dict()))
    else:
        click.echo(str(table))
    if table.leaking_ranks:
        return EXIT_LEAK
    return EXIT_OK if table.conclusive else EXIT_INCONCLUSIVE
