"""The guard's own footprint on the heap it watches: C-heap growth per verdict and per status read.

On CPU the guard's signal is the C heap (glibc ``mallinfo2``), so anything the guard keeps there
reads as the service's growth. This drives the example FastAPI app (clean route, dense guard) in
process through Starlette's TestClient and, after a warm-up, measures the heap's growth per call
of each of the guard's read paths, each call after one more request (so every verdict sees a
new sample count, as in a running service). Each configuration runs in a fresh interpreter:
``primed`` is vramguard as shipped, ``unprimed`` the same with numpy's small-buffer cache left
unfilled (``prime_numpy_cache`` disabled), the baseline.

Run: python bench/own_heap.py [--calls 400] [--rounds 3]   (median over rounds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import gc, json, sys
sys.path[:0] = [{root!r}, {src!r}]
import vramguard.readers.heap as heap_module
if not {primed}:
    heap_module.prime_numpy_cache = lambda: None
from starlette.testclient import TestClient
from examples.fastapi_app import create_app
from vramguard.adapters.endpoints import status_document
heap = heap_module.HeapCounter()
app = create_app(device="cpu", overhead_budget=None, diagnose_requests=0)
client = TestClient(app)
client.get("/predict/clean/1")
layer = app.middleware_stack
while not hasattr(layer, "web"):
    layer = layer.app
web = layer.web
paths = {{
    "nothing (requests only)": lambda: None,
    "guard.verdict()": web.guard.verdict,
    "attribution()": web.attribution,
    "route_verdict()": lambda: web.route_verdict("/predict/clean/{{item_id}}"),
    "health()": web.health,
    "status document": lambda: status_document(web),
}}
for _ in range(300):
    client.get("/predict/clean/1")
out = {{}}
for name, call in paths.items():
    if name != {path!r}:
        continue
    for _ in range(50):
        client.get("/predict/clean/1"); call()
    gc.collect(); before = heap.read()
    for _ in range({calls}):
        client.get("/predict/clean/1"); call()
    gc.collect(); out[name] = (heap.read() - before) / {calls}
print(json.dumps(out))
"""


PATHS = ("nothing (requests only)", "guard.verdict()", "attribution()", "route_verdict()",
         "status document")


def run(path: str, primed: bool, calls: int) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), src=str(ROOT / "src"), primed=primed, calls=calls,
                        path=path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=900)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"C-heap growth per call, after a request each ({args.calls} calls; median of "
          f"{args.rounds} fresh processes per path and configuration):")
    print(f"{'path':26s} {'unprimed':>12s} {'primed':>12s}   (each round: unprimed / primed)")
    for name in PATHS:
        pairs = [(run(name, False, args.calls)[name], run(name, True, args.calls)[name])
                 for _ in range(args.rounds)]
        unprimed = statistics.median(u for u, _ in pairs)
        primed = statistics.median(p for _, p in pairs)
        rounds = ", ".join(f"{u:.0f}/{p:.0f}" for u, p in pairs)
        print(f"{name:26s} {unprimed:10.1f} B {primed:10.1f} B   ({rounds})")


if __name__ == "__main__":
    main()
