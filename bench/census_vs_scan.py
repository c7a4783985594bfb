"""Census cost against the naive tensor scan and a bare gc.get_objects(), same heap, same run.

Heap: ~1M gc-tracked objects holding 20k tensors. "census" is the bytes-only census a guard runs
every k steps; "census with groups" also groups tensors for the growth diff (taken at the diff's
two ends only). Run: python bench/census_vs_scan.py
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings

import torch

from vramguard.readers.census import CensusTaker

ROUNDS = 7


def build_heap() -> list[object]:
    # Lists of one int are gc-tracked (atomic-only dicts are not), so each counts toward the heap.
    heap: list[object] = [[i] for i in range(980_000)]
    heap.extend(torch.zeros(16) for _ in range(20_000))
    return heap


def bare() -> int:
    return len(gc.get_objects())


def naive() -> int:
    total = 0
    for obj in gc.get_objects():
        if torch.is_tensor(obj):
            total += obj.element_size() * obj.nelement()
    return total


def main() -> None:
    warnings.simplefilter("ignore")  # torch.is_tensor on some deprecated torch objects warns
    heap = build_heap()
    taker = CensusTaker()
    taker.take()  # fill the per-type cache once, as a running guard would have
    print(f"heap: {bare():,} gc-tracked objects, {len(taker.live_tensors()):,} tensors")
    funcs = {"bare gc.get_objects()": bare, "naive scan": naive,
             "census": lambda: taker.take(groups=False),
             "census with groups": taker.take}
    timings: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(ROUNDS):  # interleaved, so drift on this noisy machine hits all three alike
        for name, func in funcs.items():
            started = time.perf_counter()
            func()
            timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, value in medians.items():
        print(f"{name:24s} {value * 1000:8.1f} ms (median of {ROUNDS})")
    for name in ("census", "census with groups"):
        print(f"naive scan / {name:18s} = {medians['naive scan'] / medians[name]:.2f}x "
              "(must be >= 4 for the census)")
        print(f"{name:18s} / bare get_objects = "
              f"{medians[name] / medians['bare gc.get_objects()']:.2f}x (must be <= 2.5 for the census)")
    del heap


if __name__ == "__main__":
    main()
