"""What sharing costs a distributed job: a 3-rank CPU DDP loop (gloo) bare vs. under a Guard at
its defaults plus ``vramguard.distributed.share(guard, every="30s")``, side by side.

Launches itself under torchrun. Each rank trains a small MLP with DistributedDataParallel (an
all-reduce of the gradients every step, as in real training); chunks of bare steps and of guarded
steps alternate, so machine noise hits both arms. The sharer runs from the start, at the
interval asked (``--every``); its own publish time is measured too, which gives the cost at any
interval (publish time / interval).

Run: python bench/distributed_share.py [--steps 3000] [--chunk 250] [--every 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from vramguard import Guard
    from vramguard.distributed.publish import Sharer
    from vramguard.distributed.store import default_store

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(dist.get_rank())
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = torch.randn(32, 128)

    def step() -> None:
        optimizer.zero_grad()
        model(batch).square().mean().backward()
        optimizer.step()

    guard = Guard("cpu")  # defaults: overhead_budget=0.01
    # share(guard, every=...) is Sharer(...).start(); made by hand here to time each publish.
    sharer = Sharer(guard, default_store(), every_s=args.every)
    publish_s: list[float] = []
    original = sharer.publish

    def timed_publish() -> bool:
        started = time.perf_counter()
        try:
            return original()
        finally:
            publish_s.append(time.perf_counter() - started)

    sharer.publish = timed_publish  # type: ignore[method-assign]  # bench-only instrumentation
    sharer.start()
    for _ in range(300):  # warm-up: the guard learns the step time, takes its first census
        with guard.step():
            step()
    bare: list[float] = []
    guarded: list[float] = []
    for _ in range(args.steps // args.chunk):
        started = time.perf_counter()
        for _ in range(args.chunk):
            step()
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(args.chunk):
            with guard.step():
                step()
        guarded.append(time.perf_counter() - started)
    sharer.stop(final=True)
    ratio = sum(guarded) / sum(bare)
    median = statistics.median(g / b for g, b in zip(guarded, bare, strict=True))
    step_ms = sum(bare) / (len(bare) * args.chunk) * 1e3
    print(json.dumps({"rank": dist.get_rank(), "step_ms": step_ms, "ratio": ratio,
                      "median_chunk_ratio": median, "guard_overhead": guard.overhead,
                      "publishes": len(publish_s),
                      "publish_ms": statistics.median(publish_s) * 1e3 if publish_s else None,
                      "verdict": str(guard.verdict().kind)}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--every", type=float, default=30.0)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=3",
         "--master-addr=127.0.0.1", "--master-port=29633", __file__, "--worker",
         "--steps", str(args.steps), "--chunk", str(args.chunk), "--every", str(args.every)],
        capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = sorted((json.loads(line) for line in done.stdout.splitlines()
                   if line.startswith("{")), key=lambda r: r["rank"])
    if done.returncode != 0 or len(rows) != 3:
        sys.exit(f"the job failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    print(f"3 ranks, gloo, DDP MLP; {args.steps} steps each way in chunks of {args.chunk}; "
          f"share every {args.every:g}s")
    for r in rows:
        publish = "n/a" if r["publish_ms"] is None else f"{r['publish_ms']:.2f} ms"
        print(f"rank {r['rank']}: step {r['step_ms']:.3f} ms bare; wall-clock ratio "
              f"guarded+shared/bare = {r['ratio']:.4f} (median chunk {r['median_chunk_ratio']:.4f});"
              f" guard's own reads {r['guard_overhead']:.2%}; {r['publishes']} publishes, "
              f"{publish} each (= {0 if r['publish_ms'] is None else r['publish_ms'] / 1e3 / args.every:.4%}"
              f" of wall time at this interval); verdict {r['verdict']}")


if __name__ == "__main__":
    main()
