"""What sharing costs a distributed job: a 3-rank CPU DDP loop (gloo) bare vs. under a Guard at
its defaults plus ``vramguard.distributed.share(guard, every="30s")``, side by side.

Launches itself under torchrun. Each rank trains a small MLP with DistributedDataParallel (an
all-reduce of the gradients every step, as in real training); chunks of bare steps and of guarded
steps alternate, so machine noise hits both arms. The sharer runs from the start, at the
interval asked (``--every``); its own publish time is measured too, which gives the cost at any
interval (publish time / interval).

Also printed per rank: a heap read's own CPU time, and the median guarded step right after a
read against the other guarded steps (what a read costs the steps after it, which the guard's
accounting does not see). ``--budget``: the Guard's overhead_budget; ``--nproc``: ranks;
``--repeat``: jobs in a row (the median of their ratios is printed too); ``--warmup``: guarded
steps before the arms (300: a job's first minutes; 6000: a longer job's, whose history has
thinned, so the guard reads only one step in 16 or so).

Run: python bench/distributed_share.py [--steps 3000] [--chunk 250] [--every 30] [--nproc 3]
     [--budget 0.01] [--repeat 1] [--warmup 300]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READ_WALL_S: list[float] = []  # each read's wall time (bench-only)


def count_reads(guard: object) -> list[int]:
    """Count the guard's heap reads (bench-only instrumentation), to tell which guarded steps
    came right after one (a read ends the step before): a read's effect on the steps after it
    is not in the guard's own accounting, which is the read's CPU time."""
    reads = [0]
    sampler = guard._sampler  # type: ignore[attr-defined]
    read = sampler.read

    def counted_read(*a: object, **k: object) -> object:
        reads[0] += 1
        started = time.perf_counter()
        try:
            return read(*a, **k)
        finally:
            READ_WALL_S.append(time.perf_counter() - started)

    sampler.read = counted_read
    return reads


def timed_publishes(sharer: object) -> list[float]:
    """Time each of the sharer's publishes (bench-only instrumentation)."""
    publish_s: list[float] = []
    original = sharer.publish  # type: ignore[attr-defined]

    def timed_publish() -> bool:
        started = time.perf_counter()
        try:
            return original()
        finally:
            publish_s.append(time.perf_counter() - started)

    sharer.publish = timed_publish  # type: ignore[attr-defined]
    return publish_s


def worker(args: argparse.Namespace) -> None:  # noqa: PLR0915 (one linear bench script)
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

    guard = Guard("cpu", overhead_budget=args.budget)  # the default budget is 0.01
    reads = count_reads(guard)
    after_read: list[float] = []
    other: list[float] = []
    # share(guard, every=...) is Sharer(...).start(); made by hand here to time each publish.
    sharer = Sharer(guard, default_store(), every_s=args.every)
    publish_s = timed_publishes(sharer)
    sharer.start()
    for _ in range(args.warmup):  # the guard learns the step time, takes its first census
        with guard.step():
            step()
    bare: list[float] = []
    guarded: list[float] = []
    bare_steps: list[float] = []

    def bare_chunk() -> None:
        started = time.perf_counter()
        for _ in range(args.chunk):
            at = time.perf_counter()
            step()
            bare_steps.append(time.perf_counter() - at)
        bare.append(time.perf_counter() - started)

    def guarded_chunk() -> None:
        started = time.perf_counter()
        previous_read = False
        for _ in range(args.chunk):
            before, at = reads[0], time.perf_counter()
            with guard.step():
                step()
            (after_read if previous_read else other).append(time.perf_counter() - at)
            previous_read = reads[0] > before
        guarded.append(time.perf_counter() - started)

    # ABBA: the arm that runs first alternates, so a drift over the run (the heap, the
    # machine) does not favour one arm. Every rank runs the same order (same steps).
    reads_before, READ_WALL_S[:] = reads[0], []
    for pair in range(args.steps // args.chunk):
        for chunk in ((bare_chunk, guarded_chunk) if pair % 2 == 0 else
                      (guarded_chunk, bare_chunk)):
            chunk()
    sharer.stop(final=True)
    ratio = sum(guarded) / sum(bare)
    median = statistics.median(g / b for g, b in zip(guarded, bare, strict=True))
    step_ms = sum(bare) / (len(bare) * args.chunk) * 1e3
    # One file per rank: lines the ranks print at the same moment interleave in torchrun's output.
    row = json.dumps({"rank": dist.get_rank(), "step_ms": step_ms, "ratio": ratio,
                      "median_chunk_ratio": median, "guard_overhead": guard.overhead,
                      "publishes": len(publish_s),
                      "publish_ms": statistics.median(publish_s) * 1e3 if publish_s else None,
                      "verdict": str(guard.verdict().kind),
                      "read_us": guard._account.read_cost_s * 1e6,
                      "reads": reads[0] - reads_before,
                      "mean_ms": {"bare": statistics.fmean(bare_steps) * 1e3,
                                  "after_read": statistics.fmean(after_read) * 1e3
                                  if after_read else None,
                                  "other": statistics.fmean(other) * 1e3},
                      "p99_ms": {"bare": sorted(bare_steps)[int(len(bare_steps) * .99)] * 1e3,
                                 "guarded": sorted(after_read + other)[
                                     int(len(after_read + other) * .99)] * 1e3},
                      "read_wall_us": statistics.median(READ_WALL_S) * 1e6 if READ_WALL_S else None,
                      "read_wall_total_s": sum(READ_WALL_S),
                      "guarded_s": sum(guarded),
                      "census_share": guard._account.census_spent_s / guard._account.busy_s,
                      "censuses": len(guard._history._census.samples),
                      "after_read_ms": statistics.median(after_read) * 1e3 if after_read else None,
                      "other_ms": statistics.median(other) * 1e3})
    (Path(args.out) / f"rank{dist.get_rank()}.json").write_text(row)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--every", type=float, default=30.0)
    parser.add_argument("--nproc", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=300,
                        help="guarded steps before the arms (a long job's state: 6000)")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", help=argparse.SUPPRESS)  # the workers' rows (set by job())
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.nproc} ranks, gloo, DDP MLP; {args.steps} steps each way in chunks of "
          f"{args.chunk}; share every {args.every:g}s; Guard(overhead_budget={args.budget:g})")
    jobs = [job(args) for _ in range(args.repeat)]
    if args.repeat > 1:
        ratios = [statistics.median(r["ratio"] for r in rows) for rows in jobs]
        print(f"median over {args.repeat} jobs of the ranks' median ratio: "
              f"{statistics.median(ratios):.4f} (jobs: {', '.join(f'{x:.4f}' for x in ratios)})")


def free_port() -> int:
    """A port nothing listens on now (a fixed one stays in TIME_WAIT between jobs)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def job(args: argparse.Namespace) -> list[dict[str, object]]:
    """One torchrun job; its per-rank rows, printed."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
             "--master-addr=127.0.0.1", f"--master-port={free_port()}", __file__, "--worker",
             "--steps", str(args.steps), "--chunk", str(args.chunk), "--every", str(args.every),
             "--budget", str(args.budget), "--warmup", str(args.warmup), "--out", out],
            capture_output=True, text=True, check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = sorted((json.loads(path.read_text()) for path in Path(out).glob("rank*.json")),
                      key=lambda r: r["rank"])
    if done.returncode != 0 or len(rows) != args.nproc:
        sys.exit(f"the job failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    for r in rows:
        publish = "n/a" if r["publish_ms"] is None else f"{r['publish_ms']:.2f} ms"
        print(f"rank {r['rank']}: step {r['step_ms']:.3f} ms bare; wall-clock ratio "
              f"guarded+shared/bare = {r['ratio']:.4f} (median chunk {r['median_chunk_ratio']:.4f});"
              f" guard's own reads {r['guard_overhead']:.2%}; {r['publishes']} publishes, "
              f"{publish} each (= {0 if r['publish_ms'] is None else r['publish_ms'] / 1e3 / args.every:.4%}"
              f" of wall time at this interval); verdict {r['verdict']}")
        after = "none" if r["after_read_ms"] is None else f"{r['after_read_ms']:.3f} ms"
        print(f"        reads in the guarded arm {r.get('reads')}, wall {r.get('read_wall_us')} us "
              f"median, {r.get('read_wall_total_s', 0) / r.get('guarded_s', 1):.2%} of the arm")
        print(f"        step means (ms): {r.get('mean_ms')}; p99: {r.get('p99_ms')}")
        print(f"        censuses {r.get('censuses')}, {r.get('census_share', 0):.2%} of its steps' time;"
              f" a heap read {r['read_us']:.0f} us; guarded step right after a read "
              f"{after}, other guarded steps {r['other_ms']:.3f} ms (medians)")
    return rows

if __name__ == "__main__":
    main()
