"""A long job under Guard defaults: how many reads it takes, and what it says, step by step.

1 ms steps on a fake clock (so the budget does not depend on this machine's speed; the guard's
own cost is its real CPU time), ``--steps`` of them, each keeping a 16 KiB tensor from
``--leak-from`` on. The heap counter is the guard's real one, wrapped to count the reads. At
every ``--every`` steps it prints the reads so far, the verdict (and its reason), and ``guard.overhead``.
``--package``: an older copy of vramguard to run instead (its ``src/vramguard`` copied and its
imports renamed, as in BENCHMARKS.md), to compare the two side by side.

Run: python bench/guard_long_run.py [--steps 20000] [--leak-from 14000] [--every 2000]
     [--package vramguard_base]
"""

from __future__ import annotations

import argparse
import importlib

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--leak-from", type=int, default=14_000)
    parser.add_argument("--every", type=int, default=2_000)
    parser.add_argument("--package", default="vramguard")
    args = parser.parse_args()
    package = importlib.import_module(args.package)
    device = importlib.import_module(f"{args.package}.readers.device")
    heap = importlib.import_module(f"{args.package}.readers.heap")
    sampler = importlib.import_module(f"{args.package}.readers.sampler")
    real, reads = heap.HeapCounter(), [0]

    def read() -> int:
        reads[0] += 1
        return real.read() or 0

    now = [0.0]

    def clock() -> float:  # two reads a step: each step lasts 1 ms
        now[0] += 0.001
        return now[0]

    guard = package.Guard("cpu", clock=clock, diagnose="never",
                          sampler=sampler.Sampler(device.Device("cpu"),
                                                  heap=heap.HeapCounter(probe=read)))
    kept = []
    print(f"{args.package}: {args.steps} steps of 1 ms, a 16 KiB tensor kept per step from "
          f"step {args.leak_from}")
    for step in range(1, args.steps + 1):
        with guard.step():
            if step > args.leak_from:
                kept.append(torch.empty(4096))
        if step % args.every == 0:
            verdict = guard.verdict()
            print(f"step {step:6d}: {reads[0]:6d} reads, verdict {verdict.kind.value}, "
                  f"guard.overhead {guard.overhead:.2%}; {verdict.reason}")


if __name__ == "__main__":
    main()
