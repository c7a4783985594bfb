"""What the ASGI middleware costs a real uvicorn server, as its client sees it (default settings).

Three uvicorn servers on 127.0.0.1, each a subprocess running the same FastAPI app with one clean
``async def`` route doing ``--handler-ms`` of torch work (``torch.set_num_threads(1)``, as a
serving process on a shared machine runs): ``bare``, ``pass-through`` (a pure-ASGI middleware
that only wraps ``send``, the least any middleware costs) and ``guarded``
(``VramGuardMiddleware`` at its defaults). One client (``httpx``, keep-alive) calls them in turns,
request by request, each turn in the next of the arms' six orders (a server still finishing
its last response slows the request after it, whichever server that goes to: with a fixed
order the middle arm paid for it, +100 us), so the machine's slow spells hit every arm alike. Reported per
arm: the median paired difference against ``bare`` per request, the ratio of mean latencies,
p50/p99/p99.9/max; and the guarded server's own ``overhead`` from its status. This is the issue's
"clean 1 ms request" target measured end to end (``bench/web_overhead.py`` measures the
middleware in-process, without HTTP).
Run: python bench/web_server_overhead.py [--requests 5000] [--handler-ms 1.0] [--warmup 500]
     [--budget 0.01]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import time

import httpx
from _servers import free_port, launch  # bench/ is on sys.path when run as a script
from _workload import matmul_repetitions
from web_overhead import percentile

APP = """
import torch, uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
torch.set_num_threads(1)
a, reps = torch.randn(64, 64), {reps}
app = FastAPI()

@app.get("/predict", response_class=PlainTextResponse)
async def predict() -> str:
    for _ in range(reps):
        a @ a
    return "ok"

class PassThrough:
    def __init__(self, app):
        self.app = app
    async def __call__(self, scope, receive, send):
        done = False
        async def watched(message):
            nonlocal done
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
            await send(message)
        await self.app(scope, receive, watched)

arm = {arm!r}
if arm == "guarded":
    from vramguard.asgi import VramGuardMiddleware
    app.add_middleware(VramGuardMiddleware, expose_status=True, overhead_budget={budget!r})
elif arm == "pass-through":
    app.add_middleware(PassThrough)
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


def serve(arm: str, reps: int, budget: float | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    return launch(APP.format(reps=reps, arm=arm, port=port, budget=budget), port, "/predict",
                  f"{arm} server")


def main(requests: int, handler_s: float, warmup: int, budget: float) -> None:
    arms = ("bare", "pass-through", "guarded")
    # Calibrated once, here: every server does the same number of matmuls.
    reps = matmul_repetitions(handler_s)[1]
    servers = {arm: serve(arm, reps, budget) for arm in arms}
    try:
        clients = {arm: httpx.Client(base_url=base, timeout=10) for arm, (_, base) in
                   servers.items()}
        for arm in arms:  # warm-up, and the guarded server's first reads and censuses
            for _ in range(warmup):
                clients[arm].get("/predict").raise_for_status()
        took: dict[str, list[float]] = {arm: [] for arm in arms}
        clock = time.perf_counter
        orders = list(itertools.permutations(arms))
        for index in range(requests):
            for arm in orders[index % len(orders)]:
                began = clock()
                clients[arm].get("/predict").raise_for_status()
                took[arm].append(clock() - began)
        status = clients["guarded"].get("/vramguard/status").json()
        for client in clients.values():
            client.close()
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
    base = took["bare"]
    print(f"{requests} requests per arm after {warmup} warm-up, handler {handler_s * 1e3:g} ms, "
          f"budget {budget:g}; "
          f"guarded server's own overhead {status['overhead']:.4f} "
          f"(signal: {status['signal'].get('requests_per_cut')} requests per cut)")
    print(f"guarded server's signal: {status['signal']}")
    for arm in arms:
        mine = took[arm]
        diffs = sorted(a - b for a, b in zip(mine, base, strict=True))
        print(f"{arm:>12}: paired differences p10/p25/p50/p75/p90 "
              + " / ".join(f"{percentile(diffs, q) * 1e6:+.0f}" for q in (0.1, 0.25, 0.5, 0.75, 0.9))
              + " us")
    for arm in arms:
        mine = took[arm]
        diff = statistics.median([a - b for a, b in zip(mine, base, strict=True)])
        print(f"{arm:>12}: mean {statistics.fmean(mine) * 1e6:8.1f} us "
              f"(x{statistics.fmean(mine) / statistics.fmean(base):.4f}), median paired "
              f"difference {diff * 1e6:+6.1f} us ({diff / statistics.median(base):+.2%}); "
              + ", ".join(f"{label} {percentile(mine, share) * 1e6:7.1f}"
                          for label, share in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999),
                                               ("max", 1.0))) + " us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--handler-ms", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--budget", type=float, default=0.01,
                        help="the guarded server's overhead_budget (1e-6: the fixed path alone)")
    args = parser.parse_args()
    main(args.requests, args.handler_ms / 1e3, args.warmup, args.budget)
