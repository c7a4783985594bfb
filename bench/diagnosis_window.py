"""Diagnosis window cost: the same workload plain, under the site tracker, and under
``torch.profiler.profile(profile_memory=True, with_stack=True)``. Rounds interleaved; medians.

    python bench/diagnosis_window.py [--requests 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from vramguard.diagnosis.sites import SiteTracker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one core per run: the other absorbs the shared machine's noise
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    kept: list[torch.Tensor] = []

    def workload() -> None:
        for _ in range(args.requests):
            kept.append(model(torch.randn(32, 256)))
        kept.clear()

    def plain() -> None:
        workload()

    def tracked() -> None:
        with SiteTracker().active():
            workload()

    def profiled() -> None:
        with torch.profiler.profile(profile_memory=True, with_stack=True):
            workload()

    times: dict[str, list[float]] = {"plain": [], "tracker": [], "profiler": []}
    for run in (plain, tracked, profiled):  # first use imports and initialises: not timed
        run()
    for _ in range(args.rounds):
        for name, run in (("plain", plain), ("tracker", tracked), ("profiler", profiled)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["plain"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:9s} median {median * 1e3:8.1f} ms  ratio vs plain {median / base:5.2f}x")


if __name__ == "__main__":
    main()
