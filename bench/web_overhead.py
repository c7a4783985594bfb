"""Per-request overhead of the ASGI middleware (default settings) against the same app without it.

A minimal in-process ASGI driver calls each app directly (no sockets, no HTTP parsing: what is
left is the middleware's own cost). The handler is a ~1 ms torch request that keeps nothing:
``--app raw`` a bare ASGI callable (no route: the per-route machinery sees "<unmatched>" and
never checks it), ``--app starlette`` (default) the same handler behind a Starlette router, so
the route is matched and its once-a-second leak check runs as in a real app.
Both apps are driven in interleaved rounds so machine noise hits both; we report the median of
the per-round ratios, per-request latency percentiles (p50 .. p99.9, max) of both, and the
garbage collections that ran during each app's rounds.

Before the rounds, after the warm-up, one ``gc.collect()``: a process that just imported torch
owes a full collection of everything it imported (~80 ms here), which the first net allocations
of whichever code runs next trigger. The bare handler allocates nothing that survives, so without
it that one collection always landed in a guarded request. After it, a full collection needs a
quarter of the heap to be new survivors, which the middleware's bounded state never reaches.
``--paired`` measures the cost more finely: the arms take turns *request by request* (bare, a
pass-through middleware that only wraps ``send``, and the guarded app; ABBA order), so drifts of
the machine's speed slower than a few ms hit every arm alike, and the pass-through arm shows what
any pure-ASGI middleware costs beside the same handler. It prints the median of per-block
(100 requests) ratios and the median paired difference per request. Interleaved rounds of 200
requests, the default, moved by +-2% between runs that changed nothing here.
Run: python bench/web_overhead.py [--rounds 30] [--requests 200] [--app starlette|raw]
     [--budget 0.01] [--handler-ms 1.0] [--paired [--baseline vramguard_base]]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import statistics
import time
from typing import Any

import torch
from _workload import matmul_repetitions  # bench/ is on sys.path when run as a script

from vramguard.asgi import VramGuardMiddleware


def make_handler(target_s: float = 0.001, kind: str = "raw") -> Any:
    a, reps = matmul_repetitions(target_s) if target_s > 0 else (torch.zeros(1), 0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(reps):
            a @ a
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    if kind == "raw":
        return app
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def predict(request: Any) -> PlainTextResponse:
        for _ in range(reps):
            a @ a
        return PlainTextResponse("ok")
    return Starlette(routes=[Route("/predict", predict)])


SCOPE = {"type": "http", "method": "GET", "path": "/predict", "root_path": "", "headers": [],
         "query_string": b""}  # what each request's scope starts as (copied per request)


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def drive(app: Any, requests: int, latencies: list[float] | None = None,
                spans: list[tuple[float, float]] | None = None) -> float:
    """Seconds per request for ``requests`` sequential GETs of /predict (each request's own
    seconds appended to ``latencies``, its (start, end) to ``spans``, when given)."""
    started = time.perf_counter()
    for _ in range(requests):
        began = time.perf_counter()
        await app(dict(SCOPE), receive, send)
        ended = time.perf_counter()
        if latencies is not None:
            latencies.append(ended - began)
        if spans is not None:
            spans.append((began, ended))
    return (time.perf_counter() - started) / requests


class _WorkerLog(logging.Handler):
    """Collects the worker's "... done in X ms" debug lines as (what, start, end) spans."""

    def __init__(self, spans: list[tuple[str, float, float]]) -> None:
        super().__init__(logging.DEBUG)
        self._spans = spans

    def emit(self, record: logging.LogRecord) -> None:
        ended = time.perf_counter()
        message = record.getMessage()
        if record.threadName == "vramguard-web" and " done in " in message:
            took = float(message.rsplit(" done in ", 1)[1].split()[0]) / 1e3
            self._spans.append((message.split()[1], ended - took, ended))


def collections_by_kind(slow: list[tuple[float, float]],
                        own: list[tuple[str, float, float]]) -> dict[str, int]:
    """How many of the ``slow`` (start, end) requests overlapped each kind of ``own`` span."""
    found: dict[str, int] = {}
    for began, ended in slow:
        for kind in {what for what, a, b in own if a < ended and b > began}:
            found[kind] = found.get(kind, 0) + 1
    return found


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0.999: p99.9) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def main(rounds: int, requests: int, kind: str, budget: float,
               handler_s: float = 0.001) -> None:
    bare = make_handler(handler_s, kind=kind)
    # Default settings (1% budget); ``--budget 1e-6`` leaves the fixed path alone (no reads or
    # cuts past the first four), so the two runs split the cost into path and reads.
    guarded = VramGuardMiddleware(bare, device="cpu", overhead_budget=budget)
    await drive(guarded, requests)  # warm both up
    await drive(bare, requests)
    gc.collect()  # the full collection the imports owe (see the module docstring)
    collections: dict[int, list[int]] = {id(bare): [0, 0, 0], id(guarded): [0, 0, 0]}
    driving = [id(bare)]

    own: list[tuple[str, float, float]] = []  # (what, start, end) of vramguard's work and gc

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections[driving[0]][info["generation"]] += 1
            count.began = time.perf_counter()  # type: ignore[attr-defined]
        else:
            own.append((f"gc{info['generation']}", count.began,  # type: ignore[attr-defined]
                        time.perf_counter()))
    gc.callbacks.append(count)
    worker_log = _WorkerLog(own)
    logging.getLogger("vramguard").addHandler(worker_log)
    logging.getLogger("vramguard").setLevel(logging.DEBUG)
    guarded_spans: list[tuple[float, float]] = []
    ratios, bare_s, guarded_s = [], [], []
    latencies: dict[int, list[float]] = {id(bare): [], id(guarded): []}
    for index in range(rounds):
        order = (bare, guarded) if index % 2 == 0 else (guarded, bare)
        results = {}
        for app in order:
            driving[0] = id(app)
            results[id(app)] = await drive(app, requests, latencies[id(app)],
                                           guarded_spans if app is guarded else None)
        bare_s.append(results[id(bare)])
        guarded_s.append(results[id(guarded)])
        ratios.append(results[id(guarded)] / results[id(bare)])
    gc.callbacks.remove(count)
    guarded.close()
    median_bare, median_guarded = statistics.median(bare_s), statistics.median(guarded_s)
    print(f"rounds={rounds} requests/round={requests} app={kind} budget={budget:g} "
          f"torch={torch.__version__}")
    print(f"bare app:        {median_bare * 1e6:8.1f} us/request (median)")
    print(f"with middleware: {median_guarded * 1e6:8.1f} us/request (median)")
    print(f"median ratio:    {statistics.median(ratios):.4f} "
          f"(+{(median_guarded - median_bare) * 1e6:.1f} us/request); "
          f"guard's own estimate {guarded.web.overhead:.4f}")
    for label, share in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)):
        plain, with_guard = (percentile(latencies[id(app)], share) for app in (bare, guarded))
        print(f"{label:>6} latency: bare {plain * 1e6:8.1f} us, with middleware "
              f"{with_guard * 1e6:8.1f} us, ratio {with_guard / plain:.3f}")
    # Which of vramguard's work (worker jobs, from their debug lines; gc collections) the
    # guarded requests slower than the bare app's p99.9 overlapped: the rest is the machine.
    slow_at = percentile(latencies[id(bare)], 0.999)
    slow = [(a, b) for a, b in guarded_spans if b - a > slow_at]
    hit = collections_by_kind(slow, own)
    print(f"guarded requests slower than the bare p99.9 ({slow_at * 1e6:.0f} us): {len(slow)}; "
          f"overlapping vramguard's work: {hit or 'none'}")
    print(f"gc collections (gen 0/1/2) during the rounds: bare {collections[id(bare)]}, "
          f"with middleware {collections[id(guarded)]}; worker: "
          f"{guarded.web.worker_failure or 'ok'}")


class PassThrough:
    """The least a pure-ASGI middleware does: wrap ``send`` to see the last body chunk."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        done = False

        async def watched(message: Any) -> None:
            nonlocal done
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
            await send(message)
        await self.app(scope, receive, watched)


async def paired(rounds: int, requests: int, kind: str, budget: float,
                 baseline: str | None = None, handler_s: float = 0.001) -> None:
    """The arms take turns request by request (see the module docstring). ``baseline``: the
    import name of another copy of the package (an older commit's ``src/vramguard`` copied as
    ``vramguard_base`` with its imports renamed), guarded as a fourth arm in the same process,
    so both versions meet the same machine at the same moments."""
    bare = make_handler(handler_s, kind=kind)
    guarded = VramGuardMiddleware(bare, device="cpu", overhead_budget=budget)
    arms = {"bare": bare, "pass-through": PassThrough(bare), "guarded": guarded}
    if baseline is not None:
        other = importlib.import_module(f"{baseline}.asgi").VramGuardMiddleware
        arms[baseline] = other(bare, device="cpu", overhead_budget=budget)
    for app in arms.values():
        await drive(app, requests)  # warm-up
    gc.collect()  # the full collection the imports owe (see the module docstring)
    names = list(arms)
    took: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for index in range(rounds * requests):
        for name in (names if index % 2 == 0 else names[::-1]):
            began = clock()
            await arms[name](dict(SCOPE), receive, send)
            took[name].append(clock() - began)
    for app in arms.values():
        if hasattr(app, "close"):
            app.close()
    block = 100
    base = took["bare"]
    print(f"paired: {len(base)} requests per arm, app={kind} budget={budget:g} "
          f"torch={torch.__version__}; guard's own estimate {guarded.web.overhead:.4f}")
    if baseline is not None:
        print(f"{baseline}'s own estimate {arms[baseline].web.guard.overhead:.4f} (its Guard's)")
    for name in names:
        mine = took[name]
        ratios = [sum(mine[i:i + block]) / sum(base[i:i + block])
                  for i in range(0, len(base) - block + 1, block)]
        diff = statistics.median([a - b for a, b in zip(mine, base, strict=True)])
        print(f"{name:>12}: mean {statistics.fmean(mine) * 1e6:8.1f} us, median block ratio "
              f"{statistics.median(ratios):.4f}, median paired difference {diff * 1e6:+.1f} us, "
              f"p99.9 {percentile(mine, 0.999) * 1e6:8.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--app", choices=("starlette", "raw"), default="starlette")
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--handler-ms", type=float, default=1.0,
                        help="the handler's torch work (0: an empty route, the path alone)")
    parser.add_argument("--paired", action="store_true",
                        help="arms take turns request by request (see above)")
    parser.add_argument("--baseline", metavar="PACKAGE",
                        help="with --paired: another copy of the package, guarded side by side")
    args = parser.parse_args()
    if args.paired:
        asyncio.run(paired(args.rounds, args.requests, args.app, args.budget, args.baseline,
                           args.handler_ms / 1e3))
    else:
        asyncio.run(main(args.rounds, args.requests, args.app, args.budget, args.handler_ms / 1e3))
