"""A small CPU training job for the distributed tests (run under torchrun, gloo, or by hand).

Each rank trains a linear layer for ``--steps`` steps under a Guard; ``--leak-rank`` keeps every
step's output (+16 KiB/step of live tensors). Then each rank publishes its summary through
``vramguard.distributed.share`` and rank 0 writes ``table()`` to ``--out``/table.json. The ranks
stay up (the store with them) until ``--out``/release exists, so a test can read the store from
outside. Coordination between ranks uses the job's own barrier, as a job would; vramguard uses
none. ``--die-rank`` SIGKILLs itself after its first publish; the others then wait (bounded by
``--deadline``) until rank 0's table shows it stale.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

import vramguard.distributed as vd
from vramguard import Guard


def debug_server(port: int) -> Callable[[], None]:
    """Start torch's distributed debug server with vramguard's page on ``port`` (0: none);
    returns what stops it."""
    if not port:
        return lambda: None
    from torch.distributed.debug import start_debug_server, stop_debug_server

    start_debug_server(port=port, handlers=[vd.debug_handler()])
    # Its frontend is a process of its own: the job's os._exit skips the cleanup that would end
    # it, and it stayed behind, orphaned, after every suite (found by `ps` after a full run).
    return stop_debug_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--leak-rank", type=int, default=-1)
    parser.add_argument("--die-rank", type=int, default=-1)
    parser.add_argument("--new-group-every-step", action="store_true")
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--debug-port", type=int, default=0)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # overhead_budget=None: a sample after every step, so a verdict in a few dozen steps (the
    # defaults budget 1% of the step time and need hundreds); sharing is what these jobs test.
    guard = Guard("cpu", overhead_budget=None, warmup=5)
    model = torch.nn.Linear(64, 64)
    kept = []
    groups = []
    for _ in range(args.steps):
        with guard.step():
            out = model(torch.randn(64, 64))
            out.sum().backward()
            if rank == args.leak_rank:
                kept.append(out.detach().clone())  # the leak: 64x64 float32 = 16 KiB a step
            if args.new_group_every_step:
                groups.append(dist.new_group(backend="gloo"))  # never destroyed

    sharer = vd.share(guard, every=args.every)
    stop_debug_server = debug_server(args.debug_port if rank == 0 else 0)
    assert sharer.wait_for(1, timeout=args.deadline), "first publish never happened"
    (args.out / f"rank{rank}.published").write_text(json.dumps(sharer.last.to_json()))
    if rank == args.die_rank:
        os.kill(os.getpid(), signal.SIGKILL)
    if args.die_rank < 0:
        dist.barrier()  # every rank has published (the job's own collective, not vramguard's)
    deadline = time.monotonic() + args.deadline
    if rank == 0:
        while True:
            table = vd.table(timeout="5s")
            # Only the killed rank stale: a leaking rank's first publish takes two censuses
            # (0.56-0.73 s on a loaded 2-core box), longer than 3 intervals of 0.2 s, so a read
            # just after it can find that rank stale too, until its next publish lands.
            expected_stale = set() if args.die_rank < 0 else {args.die_rank}
            done = not table.missing_ranks and table.stale_ranks == expected_stale
            if done or time.monotonic() > deadline:
                break
            sharer.wait_for(sharer.published + sharer.failures + 1, timeout=args.deadline)
        (args.out / "table.json.partial").write_text(json.dumps(
            {"table": table.to_dict(), "text": str(table)}))
        os.replace(args.out / "table.json.partial", args.out / "table.json")
    release = args.out / "release"
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # a poll for the test's signal, bounded by the deadline
    sharer.stop()
    stop_debug_server()
    # No destroy/barrier at the end: with a rank killed, the others must still exit.
    os._exit(0)


if __name__ == "__main__":
    main()
