"""Per-request overhead of the ASGI middleware (default settings) against the same app without it.

A minimal in-process ASGI driver calls each app directly (no sockets, no HTTP parsing: what is
left is the middleware's own cost). The handler is a ~1 ms torch request that keeps nothing.
Both apps are driven in interleaved rounds so machine noise hits both; we report the median of
the per-round ratios, and per-request latency percentiles (p50 .. p99.9, max) of both.
Run: python bench/web_overhead.py [--rounds 30] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import torch
from _workload import matmul_repetitions  # bench/ is on sys.path when run as a script

from vramguard.asgi import VramGuardMiddleware


def make_handler(target_s: float = 0.001) -> Any:
    a, reps = matmul_repetitions(target_s)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(reps):
            a @ a
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


async def drive(app: Any, requests: int, latencies: list[float] | None = None) -> float:
    """Seconds per request for ``requests`` sequential GETs of /predict (each request's own
    seconds appended to ``latencies`` when given)."""
    scope = {"type": "http", "method": "GET", "path": "/predict", "root_path": "",
             "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        began = time.perf_counter()
        await app(dict(scope), receive, send)
        if latencies is not None:
            latencies.append(time.perf_counter() - began)
    return (time.perf_counter() - started) / requests


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0.999: p99.9) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def main(rounds: int, requests: int) -> None:
    bare = make_handler()
    guarded = VramGuardMiddleware(bare, device="cpu")  # default settings (1% budget)
    await drive(guarded, requests)  # warm both up
    await drive(bare, requests)
    ratios, bare_s, guarded_s = [], [], []
    latencies: dict[int, list[float]] = {id(bare): [], id(guarded): []}
    for index in range(rounds):
        order = (bare, guarded) if index % 2 == 0 else (guarded, bare)
        results = {id(app): await drive(app, requests, latencies[id(app)]) for app in order}
        bare_s.append(results[id(bare)])
        guarded_s.append(results[id(guarded)])
        ratios.append(results[id(guarded)] / results[id(bare)])
    median_bare, median_guarded = statistics.median(bare_s), statistics.median(guarded_s)
    print(f"rounds={rounds} requests/round={requests} torch={torch.__version__}")
    print(f"bare app:        {median_bare * 1e6:8.1f} us/request (median)")
    print(f"with middleware: {median_guarded * 1e6:8.1f} us/request (median)")
    print(f"median ratio:    {statistics.median(ratios):.4f} "
          f"(+{(median_guarded - median_bare) * 1e6:.1f} us/request); "
          f"guard's own estimate {guarded.web.guard.overhead:.4f}")
    for label, share in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)):
        plain, with_guard = (percentile(latencies[id(app)], share) for app in (bare, guarded))
        print(f"{label:>6} latency: bare {plain * 1e6:8.1f} us, with middleware "
              f"{with_guard * 1e6:8.1f} us, ratio {with_guard / plain:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests))
