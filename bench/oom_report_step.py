"""Cost of ``Guard(oom_report=...)`` on the error-free path.

Compared with the step as it was before the feature and with a plain Guard; all run the same
trivial step (so the guard's own cost dominates), interleaved in rounds so machine noise hits
each alike; reports medians. ``overhead_budget=0.01`` as in production.

Run: python bench/oom_report_step.py [--steps 20000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vramguard.guard import Guard, _Step


class _StepBefore(_Step):
    """The step context manager as it was before ``oom_report`` (no exception test)."""

    __slots__ = ()

    def __exit__(self, *exc: object) -> None:
        self._guard._end_step(self._started)


def per_step(guard: Guard, steps: int, *, before: bool = False) -> float:
    started = time.perf_counter()
    if before:
        for _ in range(steps):
            with _StepBefore(guard):
                pass
    else:
        for _ in range(steps):
            with guard.step():
                pass
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        plain = Guard("cpu")
        with_oom = Guard("cpu", oom_report=Path(folder) / "oom.txt")
        per_step(plain, args.steps)  # warm both up: the first reads calibrate the cadence
        per_step(with_oom, args.steps)
        before, base, cand = [], [], []
        for _ in range(args.rounds):
            before.append(per_step(plain, args.steps, before=True))
            base.append(per_step(plain, args.steps))
            cand.append(per_step(with_oom, args.steps))
    for name, values in (("step before oom_report existed", before),
                         ("plain Guard step", base), ("Guard(oom_report=...) step", cand)):
        print(f"{name:32s} median {statistics.median(values) * 1e9:6.0f} ns")
    for name, top, bottom in (("plain now / before", base, before),
                              ("oom_report / before", cand, before),
                              ("oom_report / plain", cand, base)):
        ratios = [t / b for t, b in zip(top, bottom, strict=True)]
        print(f"ratio {name:22s} median of {args.rounds} rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
