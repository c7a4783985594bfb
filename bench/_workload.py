"""The request the overhead benchmarks time: 64x64 matmuls, calibrated to a target duration."""

from __future__ import annotations

import time

import torch


def matmul_repetitions(target_s: float = 0.001) -> tuple[torch.Tensor, int]:
    """(matrix, repetitions) such that ``repetitions`` of ``matrix @ matrix`` take ~``target_s``.

    Sets torch to one thread: one core per request, the other absorbs the machine's noise.
    """
    torch.set_num_threads(1)
    a = torch.randn(64, 64)
    timings = []
    for _ in range(7):  # the fastest of several timings: machine noise only ever adds time
        started = time.perf_counter()
        for _ in range(200):
            a @ a
        timings.append((time.perf_counter() - started) / 200)
    return a, max(1, round(target_s / min(timings)))
