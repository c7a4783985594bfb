"""What one cold heap read costs, with and without the filling of the heap's holes, side by side.

Two fresh interpreters run the same script: torch, FastAPI, uvicorn, scipy and vramguard's
middleware imported (a server's start), then a leak that keeps a small model's output (with its
graph) and frees temporaries between them (~1 hole a step, as a leaking route does). One has the
filling switched off (``readers.heap._holes`` disabled before the first counter), one runs as
shipped. Reported at each stage: the free chunks that ``mallinfo2`` walks, the median CPU time of
a read taken after 64 MiB of other work evicted the caches (a read after a request's or a step's
work), what the fillings took (bytes kept, CPU time), and the leak's bytes per step as the
counter reads them (the same in both: the filling's bytes are left out).

Run: python bench/heap_read.py [--steps 3000] [--reads 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import torch, fastapi, uvicorn, scipy.optimize, scipy.stats
torch.set_num_threads(1)
import vramguard.asgi
from vramguard.readers import heap
fill, steps, reads = sys.argv[1] == "on", int(sys.argv[2]), int(sys.argv[3])
if not fill:
    heap._holes._fill = None
mallinfo2 = heap._bind_mallinfo2()
counter = heap.HeapCounter()
app = vramguard.asgi.VramGuardMiddleware(fastapi.FastAPI())
evict = np.ones(8 << 20)  # 64 MiB

def stage(name, per_step=None):
    times = []
    for _ in range(reads):
        evict.sum()
        started = time.thread_time()
        counter.read()
        times.append(time.thread_time() - started)
    info = mallinfo2()
    print(json.dumps(dict(stage=name, free_chunks=info.ordblks + info.smblks,
                          read_us=sorted(times)[reads // 2] * 1e6, taken=heap._holes.taken,
                          fill_ms=heap.fill_seconds() * 1e3, per_step=per_step)), flush=True)

stage("start")
model, kept = torch.nn.Linear(32, 8), []
for part in range(3):
    before = counter.read()
    for _ in range(steps // 3):
        kept.append(model(torch.randn(2, 32)))
        scratch = [torch.randn(3, 7) for _ in range(3)]
        del scratch
        if len(kept) % 25 == 0:
            counter.read()  # a guard reads now and then: a filling happens at a read
    stage(f"after {(part + 1) * (steps // 3)} leaking steps", (counter.read() - before) / (steps // 3))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--reads", type=int, default=30)
    args = parser.parse_args()
    runs = {}
    for arm in ("off", "on"):
        done = subprocess.run([sys.executable, "-c", CHILD, arm, str(args.steps),
                               str(args.reads)], capture_output=True, text=True, check=True)
        runs[arm] = [json.loads(line) for line in done.stdout.splitlines()]
    print(f"{'stage':28} {'free chunks off/on':>20} {'cold read us off/on':>22} "
          f"{'ratio':>6} {'B/step off/on':>16}")
    for off, on in zip(runs["off"], runs["on"], strict=True):
        per_step = "" if off["per_step"] is None else f"{off['per_step']:.0f}/{on['per_step']:.0f}"
        print(f"{off['stage']:28} {off['free_chunks']:>9}/{on['free_chunks']:<10} "
              f"{off['read_us']:>10.1f}/{on['read_us']:<11.1f} "
              f"{on['read_us'] / off['read_us']:>6.2f} {per_step:>16}")
    last = runs["on"][-1]
    print(f"fillings (on): {last['taken'] / 1024:.0f} KiB kept, {last['fill_ms']:.2f} ms of CPU "
          f"in all")


if __name__ == "__main__":
    main()
