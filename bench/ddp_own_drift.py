"""The training callbacks' own footprint on a clean CPU DDP rank's heap: growth per step.

On CPU the guard's signal is the C heap, which every thread's glibc tcache counts as in use.
Under torch.distributed the training watch shares each rank's summary from a thread of its own
(rank 0 also reads the rank table from another), and those threads judge and talk to the store.
This runs 2 ranks (gloo, ``torch.distributed.run``) of a clean loop (a 64x64 matmul and a
one-element all-reduce a step, 600 steps) three ways, each in fresh processes:

- ``bare``: no vramguard;
- ``shipped``: a ``TrainingWatch`` with sharing, dense reads (``overhead_budget=None``), a check
  every 10 steps, warm-up 120: as the DDP callback tests run it;
- ``unprimed``: the same, with the sharing threads' tcache left unfilled (the baseline before
  ``prime_thread_cache`` ran in them).

Prints each rank's heap growth per step over steps 20..120, 120..300 and 300..600, and its final
verdict (a clean loop: anything but ``no_leak`` is a false alarm or too little evidence).

Run: python bench/ddp_own_drift.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RANK = """
import sys
sys.path[:0] = [{src!r}]
import torch, torch.distributed as dist
import vramguard.readers.heap as heap
mode = {mode!r}
if mode == "unprimed":  # the sharing threads only: the Guard still primes the main thread
    import vramguard.distributed.publish as publish
    import vramguard.distributed.training as training
    publish.prime_thread_cache = training.prime_thread_cache = lambda long_lived=False: None
from vramguard._training import TrainingWatch
counter = heap.HeapCounter()
dist.init_process_group("gloo")
watch = None
if mode != "bare":
    watch = TrainingWatch("loop", check_every=10, share=True, guard_options=dict(
        overhead_budget=None, warmup=120, diagnose_steps=10))
    watch.start("cpu")
x = torch.randn(64, 64)
marks = {{}}
for step in range(1, 601):
    if watch is not None:
        watch.begin()
    (x @ x).sum()
    dist.all_reduce(x[:1, :1].clone())
    if watch is not None and watch.end():
        watch.check()
        watch.checked()
    if step in (20, 120, 300, 600):
        marks[step] = counter.read()
spans = ((20, 120), (120, 300), (300, 600))
rates = " ".join(f"{{a}}..{{b}} {{(marks[b] - marks[a]) / (b - a):+5.0f}}" for a, b in spans)
verdict = "-" if watch is None else watch.verdict.kind.value
print(f"{{mode:9}} rank {{dist.get_rank()}}: B/step {{rates}}; verdict {{verdict}}", flush=True)
if watch is not None:
    watch.close()
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(mode: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "rank.py"
        script.write_text(RANK.format(src=str(ROOT / "src"), mode=mode))
        env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR",
                   TORCH_FR_BUFFER_SIZE="0")  # the flight recorder's own growth: see README
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
             "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script)],
            env=env, capture_output=True, text=True, timeout=300, check=False)
    # Only the ranks' result lines: the rank tables the watch logs also say "B/step".
    lines = [line.split("]:", 1)[-1] for line in done.stdout.splitlines()
             if f"{mode:9} rank " in line]
    if done.returncode != 0 or len(lines) != 2:
        return (f"{mode}: failed (exit {done.returncode})\n{done.stdout[-1500:]}"
                f"{done.stderr[-1500:]}")
    return "\n".join(sorted(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}")
        for mode in ("bare", "shipped", "unprimed"):
            print(run(mode), flush=True)


if __name__ == "__main__":
    main()
