"""Guard defaults during a leak: wall-clock cost, the guard's own accounting, and verdict stability.

A ~2 ms step (64x64 matmuls) that also keeps ~1 MiB of outputs with their autograd graph (a
Linear's 512x256 output plus its saved input), run ``--steps`` times bare and then guarded with
``Guard("cpu")`` at default settings, each in a fresh list, alternating ``--rounds`` times so
machine noise hits both. The leak makes each step dearer as the heap grows (page faults), so the
two runs of a round do identical work. Prints the wall-clock ratio guarded/bare, the guard's
``overhead`` (its own CPU time over step time), the step at which the verdict first said leak,
and whether a verdict checked every 25 steps after step 300 ever said anything else.

Run: python bench/guard_leak.py [--steps 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ratios, overheads = [], []
    for round_ in range(args.rounds):
        bare, _ = run(args.steps, None)
        guard = Guard("cpu")
        guarded, verdicts = run(args.steps, guard)
        ratios.append(guarded / bare)
        overheads.append(guard.overhead)
        final = guard.verdict()
        stable = set(verdicts) == {VerdictKind.LEAK.value}
        print(f"round {round_ + 1}: bare {bare:.2f} s, guarded {guarded:.2f} s, ratio "
              f"{guarded / bare:.4f}; guard.overhead {guard.overhead * 100:.3f}%; "
              f"{len(guard.samples)} samples; detected after step {final.detected_after}; "
              f"first check (step 300) {verdicts[0]}; leak at every check after 300: {stable}; "
              f"growth {final.growth}")
    print(f"median wall-clock ratio guarded/bare {statistics.median(ratios):.4f} "
          f"(target <= 1.05); worst guard.overhead {max(overheads) * 100:.3f}% (target <= 1.5%)")


if __name__ == "__main__":
    main()
