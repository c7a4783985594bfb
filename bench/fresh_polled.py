"""A fresh process that asks for the verdict after every step: false `leak` checks and heap
growth, with and without the per-thread tcache priming, side by side.

Each round runs two fresh interpreters: ``primed`` is vramguard as shipped
(``readers.heap.prime_thread_cache`` fills the thread's glibc tcache at its first heap read),
``unprimed`` the same with that priming disabled, the baseline. The job: a 256-256-256 MLP,
forward and backward on one batch each step (keeps nothing), ``Guard("cpu",
overhead_budget=None, diagnose="never")``, ``guard.verdict()`` after every step, as a health
check polled at every request would.

Run: python bench/fresh_polled.py [--steps 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = """
import json, sys
sys.path.insert(0, {src!r})
import vramguard.readers.heap as heap_module
if not {primed}:
    heap_module.prime_thread_cache = lambda: None
import vramguard.guard as guard_module
if not {primed}:
    guard_module.prime_thread_cache = lambda: None
import torch
torch.set_num_threads(1)
guard = guard_module.Guard("cpu", overhead_budget=None, diagnose="never")
model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
features = torch.randn(64, 256)
kinds = []
for step in range({steps}):
    with guard.step():
        model(features).sum().backward()
    kinds.append(guard.verdict().kind.value)
samples = guard.samples
print(json.dumps({{"leaks": kinds.count("leak"), "final": kinds[-1],
                  "grown": samples[-1].allocated - samples[1].allocated}}))
"""


def run(primed: bool, steps: int) -> dict[str, object]:
    code = CHILD.format(src=str(SRC), primed=primed, steps=steps)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[bool, list[dict[str, object]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for primed in (False, True):
            rows[primed].append(run(primed, args.steps))
    for primed in (False, True):
        label = "primed (as shipped)" if primed else "unprimed (baseline)"
        leaks = [int(r["leaks"]) for r in rows[primed]]  # type: ignore[call-overload]
        grown = [int(r["grown"]) for r in rows[primed]]  # type: ignore[call-overload]
        finals = [str(r["final"]) for r in rows[primed]]
        print(f"{label:22s} leak checks of {args.steps}: {leaks} (median "
              f"{statistics.median(leaks):g}); heap growth sample 1 -> end: "
              f"{', '.join(f'{g / 1024:+.1f} KiB' for g in grown)}; final verdicts {finals}")


if __name__ == "__main__":
    main()
