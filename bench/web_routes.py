"""Per-route verdicts at DEFAULT settings against a real uvicorn server on 127.0.0.1.

(a) sequential: an ``async def`` route keeping ~2-3 KiB a request (outputs with their graph in a
    dict) and a clean one, called by one client alternately, or in a random (seeded) order:
    alternation aliases with the sparse cuts (see README). Reported: the leaking route's
    request at which its verdict first read ``leak`` (checked every 50 of its requests, up to
    ``--sequential``), the clean route's verdict, the guard's overhead. ``--work N`` adds N 64x64
    matmuls to both routes (100: a ~1 ms handler), since the budget is a share of request time.
(b) concurrent: the same routes as plain ``def`` endpoints (FastAPI's threadpool), 4 client
    threads each picking a route at random (seeded), ``--concurrent`` requests in all. Reported:
    both verdicts every 250 requests, the attributed bytes/request with its 95% interval, and the
    true bytes/request (the same code in a bare loop, heap counter before/after).

The server is a subprocess (the client's own allocations stay out of its heap counter), with
``torch.set_num_threads(1)`` as a serving process on a shared machine would run.
Run: python bench/web_routes.py [--sequential 1000] [--concurrent 2000] [--rows 2] [--work 0]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import threading
import time
from typing import Any

import httpx
from _servers import free_port, launch  # bench/ is on sys.path when run as a script


def serve(options: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = ("import torch, uvicorn; torch.set_num_threads(1); "
            "from tests.integration.targets.web_apps import leaky_app; "
            f"uvicorn.run(leaky_app({options}), host='127.0.0.1', port={port}, "
            "log_level='warning')")
    return launch(code, port, "/vramguard/healthz")


def routes(client: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    status = client.get("/vramguard/status").json()
    return status, {r["route"]: r for r in status["routes"]}


def true_bytes_per_request(rows: int) -> float:
    import torch

    from vramguard.readers.heap import HeapCounter

    heap, model, kept = HeapCounter(), torch.nn.Linear(32, 8), {}
    for i in range(200):
        kept[i] = model(torch.randn(rows, 32))
    before = heap.read()
    for i in range(200, 1200):
        kept[i] = model(torch.randn(rows, 32))
    after = heap.read()
    assert before is not None
    assert after is not None
    return (after - before) / 1000


def sequential(limit: int, rows: int, order: str, work: int) -> None:
    process, base = serve(f"rows={rows}, work={work}")
    found = None
    rng = random.Random(0)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            i = 0
            while i < limit:
                # alternate: /leak, /clean, /leak, ...; random: each request a fair coin (seeded)
                leak = rng.random() < 0.5 if order == "random" else True
                client.get("/leak" if leak else "/clean")
                if order == "alternate":
                    client.get("/clean")
                if not leak:
                    continue
                i += 1
                if i % 50 == 0:
                    status, by_route = routes(client)
                    verdict = by_route["/leak"]["check"]["verdict"]
                    if verdict == "leak" and found is None:
                        found = i
                    if i % 250 == 0 or (found == i):
                        print(f"  {i:5d} leak requests: /leak {verdict} "
                              f"(measured {by_route['/leak']['measured']}), /clean "
                              f"{by_route['/clean']['check']['verdict']}, overall "
                              f"{status['overall']['verdict']}, overhead "
                              f"{status['overhead']:.4f}", flush=True)
            status, by_route = routes(client)
    finally:
        process.kill()
        process.wait()
    print(f"(a) sequential ({order} order), defaults: /leak verdict leak first seen at request "
          f"{found} of it "
          f"(checked every 50; limit {limit}); /clean at the end: "
          f"{by_route['/clean']['check']['verdict']} "
          f"({by_route['/clean']['check']['reason']})")


def concurrent(total: int, rows: int, truth: float) -> None:
    process, base = serve(f"rows={rows}, sync=True")
    lock = threading.Lock()
    done = [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                with lock:
                    if done[0] >= total:
                        return
                    done[0] += 1
                http.get(rng.choice(["/leak", "/clean"]))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    try:
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=base, timeout=30) as http:
            shown = 0
            while any(t.is_alive() for t in threads):
                time.sleep(0.05)
                if done[0] - shown >= 250:
                    shown = done[0] // 250 * 250
                    _, by_route = routes(http)
                    show(shown, by_route)
            for thread in threads:
                thread.join()
            _status, by_route = routes(http)
            # Quiet now: the same work measured in the server itself (its allocator's state).
            served_truth = http.get("/truth").json()["bytes_per_request"]
    finally:
        process.kill()
        process.wait()
    show(total, by_route)
    print(f"  true bytes/request measured in the server afterwards: {served_truth:.0f}")
    leak = by_route["/leak"]["attribution"] or {}
    low, high = leak.get("ci95") or (None, None)
    covered = low is not None and low <= truth <= high and low <= served_truth <= high
    print(f"(b) 4 concurrent clients, sync endpoints, defaults, {total} requests: /leak "
          f"{by_route['/leak']['check']['verdict']}, /clean "
          f"{by_route['/clean']['check']['verdict']}; attributed "
          f"{leak.get('bytes_per_request')} B/request, 95% CI {low} .. {high}; true "
          f"{truth:.0f} B/request (bare loop), {served_truth:.0f} (in the server); covered "
          f"(both): {covered}; overlapped "
          f"{by_route['/leak']['overlapped']}/{by_route['/leak']['requests']}")


def show(at: int, by_route: dict[str, Any]) -> None:
    parts = []
    for name in ("/leak", "/clean"):
        route = by_route.get(name)
        if route is None:
            continue
        attribution = route["attribution"] or {}
        parts.append(f"{name} {route['check']['verdict']} (windows "
                     f"{attribution.get('windows')}, {attribution.get('bytes_per_request')})")
    print(f"  {at:5d} requests: " + "; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--work", type=int, default=0,
                        help="64x64 matmuls per request besides (sequential runs): a longer handler")
    parser.add_argument("--order", nargs="+", choices=["alternate", "random"],
                        default=["alternate", "random"])
    args = parser.parse_args()
    truth = true_bytes_per_request(args.rows)
    print(f"leak: {truth:.0f} B/request of native heap (bare loop, rows={args.rows})")
    if args.sequential:
        for order in args.order:
            sequential(args.sequential, args.rows, order, args.work)
    if args.concurrent:
        concurrent(args.concurrent, args.rows, truth)


if __name__ == "__main__":
    main()
