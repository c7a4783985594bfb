"""What a census costs the requests around it: taken inside a request (where the Guard took it
before) or on the web guard's background worker (``adapters/checker.py``, where it runs now).

The guarded ~1 ms Starlette request of ``web_overhead.py``, driven in-process; in each of 10
rounds of 200 requests one grouped census is taken at request 100, either inside that request
or asked of a worker thread. Reported: the slowest request among 95..130 of each round (median
and max over the rounds) and the census's own time when inline. The heap holds ``--graphs``
retained MLP outputs with their autograd graphs (the census walks them in Python: a thread can
interleave with that) or, with ``--objects``, plain lists (one C-level gc pass that holds the
GIL: a thread cannot hide that).
Run: python bench/web_census_stall.py [--graphs 3000] [--objects 0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

import torch
from web_overhead import SCOPE, make_handler, receive, send  # bench/ is on sys.path

from vramguard.adapters.checker import Worker
from vramguard.asgi import VramGuardMiddleware
from vramguard.readers.device import resolve_device
from vramguard.readers.sampler import Sampler


async def run(mode: str) -> tuple[list[float], list[float]]:
    """(slowest request near each census, census seconds when inline) over 10 rounds."""
    app = VramGuardMiddleware(make_handler(kind="starlette"), device="cpu")
    sampler = Sampler(resolve_device("cpu"))
    worker = Worker(lambda key: sampler.census(groups=True), name="census-bench")
    for _ in range(300):
        await app(dict(SCOPE), receive, send)
    gc.collect()
    worst, took = [], []
    for round_ in range(10):
        latencies = []
        for index in range(200):
            extra = 0.0
            if index == 100 and mode == "inline":
                started = time.perf_counter()
                sampler.census(groups=True)
                extra = time.perf_counter() - started
                took.append(extra)
            elif index == 100:
                worker.ask(round_)
            started = time.perf_counter()
            await app(dict(SCOPE), receive, send)
            latencies.append(time.perf_counter() - started + extra)
        worst.append(max(latencies[95:130]))
    worker.idle(60)
    worker.close()
    app.close()
    return worst, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=3000)
    parser.add_argument("--objects", type=int, default=0)
    args = parser.parse_args()
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    kept = [model(torch.randn(4, 32)) for _ in range(args.graphs)]
    ballast = [[i] for i in range(args.objects)]
    print(f"heap: {len(gc.get_objects())} objects, {len(kept)} retained graphs, "
          f"{len(ballast)} plain lists")
    for mode in ("inline", "worker", "inline", "worker"):
        worst, took = asyncio.run(run(mode))
        own = f"; census {statistics.median(took) * 1e3:.1f} ms" if took else ""
        print(f"{mode:>6}: slowest request near each census: median "
              f"{statistics.median(worst) * 1e3:.1f} ms, max {max(worst) * 1e3:.1f} ms{own}")


if __name__ == "__main__":
    main()
