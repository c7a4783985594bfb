"""Guard defaults during a leak: wall-clock cost, the guard's own accounting, and verdict stability.

A ~2 ms step (64x64 matmuls) that also keeps ~1 MiB of outputs with their autograd graph (a
Linear's 512x256 output plus its saved input), run ``--steps`` times bare and then guarded with
``Guard("cpu")`` at default settings, each in a fresh list, alternating ``--rounds`` times so
machine noise hits both. The leak makes each step dearer as the heap grows (page faults), so the
two runs of a round do identical work. Prints the wall-clock ratio guarded/bare, the guard's
``overhead`` (its own CPU time over step time), the step at which the verdict first said leak,
and whether a verdict checked every 25 steps after step 300 ever said anything else.

Each round runs in a fresh interpreter (a diagnosis window left running by one guard would
otherwise share the heap and the CPU with the next round). ``--diagnose never`` measures the
sampling alone; the default (``auto``) includes the diagnosis window a leak verdict opens (30
steps under the allocation-site tracker, the first of which imports torch's dispatch machinery).

Run: python bench/guard_leak.py [--steps 600] [--rounds 3] [--diagnose auto|never]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import torch
from _workload import matmul_repetitions  # bench/ is on sys.path when run as a script

from vramguard import Guard, VerdictKind


def run(steps: int, guard: Guard | None) -> tuple[float, list[str]]:
    a, reps = matmul_repetitions(0.002)
    model = torch.nn.Linear(256, 256)
    kept = []
    verdicts: list[str] = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        if guard is None:
            for _ in range(reps):
                a @ a
            kept.append(model(torch.randn(512, 256)))
        else:
            with guard.step():
                for _ in range(reps):
                    a @ a
                kept.append(model(torch.randn(512, 256)))
            if step >= 300 and step % 25 == 0:
                verdicts.append(guard.verdict().kind.value)
    elapsed = time.perf_counter() - started
    del kept
    gc.collect()
    return elapsed, verdicts


def one(steps: int, diagnose: str) -> dict[str, object]:
    bare, _ = run(steps, None)
    guard = Guard("cpu", diagnose=diagnose)
    guarded, verdicts = run(steps, guard)
    final = guard.verdict()
    return {"bare": bare, "guarded": guarded, "overhead": guard.overhead,
            "samples": len(guard.samples), "detected": final.detected_after,
            "first": verdicts[0] if verdicts else None,
            "stable": set(verdicts) == {VerdictKind.LEAK.value}, "growth": str(final.growth)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--diagnose", default="auto", choices=["auto", "never"])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.steps, args.diagnose)))
        return
    ratios, overheads = [], []
    for round_ in range(args.rounds):
        out = subprocess.run([sys.executable, __file__, "--one", "--steps", str(args.steps),
                              "--diagnose", args.diagnose], capture_output=True, text=True,
                             check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        ratio = float(r["guarded"]) / float(r["bare"])
        ratios.append(ratio)
        overheads.append(float(r["overhead"]))
        print(f"round {round_ + 1}: bare {r['bare']:.2f} s, guarded {r['guarded']:.2f} s, ratio "
              f"{ratio:.4f}; guard.overhead {float(r['overhead']) * 100:.3f}%; "
              f"{r['samples']} samples; detected after step {r['detected']}; first check "
              f"(step 300) {r['first']}; leak at every check after 300: {r['stable']}; "
              f"growth {r['growth']}")
    print(f"diagnose={args.diagnose}: median wall-clock ratio guarded/bare "
          f"{statistics.median(ratios):.4f} (target <= 1.05); worst guard.overhead "
          f"{max(overheads) * 100:.3f}% (target <= 1.5%)")


if __name__ == "__main__":
    main()
