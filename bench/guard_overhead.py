"""Guard overhead per step against the same loop without a guard, measured side by side.

CPU (default): a ~1 ms request (a small matmul loop), N requests bare vs. under
``Guard(device="cpu")`` with default settings, interleaved in chunks so machine noise hits both.
CUDA (``--device cuda``): the cost of one guard sample against the
``torch.cuda.memory_allocated()`` + ``torch.cuda.memory_reserved()`` pair people use today.

Run: python bench/guard_overhead.py [--device cuda] [--requests 6000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _workload import matmul_repetitions  # bench/ is on sys.path when run as a script

from vramguard.guard import Guard
from vramguard.readers.allocator import AllocatorReader
from vramguard.readers.device import resolve_device


def make_request(target_s: float = 0.001):
    a, reps = matmul_repetitions(target_s)

    def request() -> None:
        for _ in range(reps):
            a @ a
    return request


def cpu(requests: int, chunk: int = 500) -> None:
    request = make_request()
    guard = Guard(device="cpu")
    for _ in range(300):  # let the guard learn the step time and take its first census
        with guard.step():
            request()
    # steady state: the guard's own accounting from here on (the first census, a one-off of a
    # few ms at step 16, is excluded; a long-running service amortises it to nothing)
    spent0, busy0 = guard._account.spent_s, guard._account.busy_s
    bare_times: list[float] = []
    guard_times: list[float] = []
    for _ in range(requests // chunk):
        started = time.perf_counter()
        for _ in range(chunk):
            request()
        bare_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(chunk):
            with guard.step():
                request()
        guard_times.append(time.perf_counter() - started)
    bare = sum(bare_times) / (len(bare_times) * chunk)
    guarded = sum(guard_times) / (len(guard_times) * chunk)
    print(f"request: {bare * 1e3:.3f} ms bare, {guarded * 1e3:.3f} ms guarded "
          f"({requests} each, interleaved chunks of {chunk})")
    chunk_ratio = statistics.median(g / b for g, b in zip(guard_times, bare_times, strict=True))
    print(f"wall-clock ratio guarded/bare = {guarded / bare:.4f} (median chunk ratio {chunk_ratio:.4f})")
    steady = (guard._account.spent_s - spent0) / (guard._account.busy_s - busy0)
    print(f"guard's own accounting: {steady * 100:.3f}% of step time spent reading memory in the "
          f"timed part ({guard.overhead * 100:.3f}% including warm-up); {len(guard.samples)} samples kept")
    empty = Guard(device="cpu")
    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        with empty.step():
            pass
    step_cost = (time.perf_counter() - started) / n
    print(f"fixed cost of an empty guarded step: {step_cost * 1e6:.2f} us "
          f"= {step_cost / bare * 100:.3f}% of this request")


def cuda(rounds: int = 20000) -> None:
    device = resolve_device("cuda")
    reader = AllocatorReader(device)
    keep = [torch.empty(1024, device="cuda") for _ in range(100)]
    def pair() -> None:
        torch.cuda.memory_allocated(device.index)
        torch.cuda.memory_reserved(device.index)
    results = {}
    for name, func in (("memory_allocated()+memory_reserved()", pair), ("vramguard sample", reader.read)):
        func()
        started = time.perf_counter()
        for _ in range(rounds):
            func()
        results[name] = (time.perf_counter() - started) / rounds
        print(f"{name:40s} {results[name] * 1e6:8.2f} us")
    ratio = results["memory_allocated()+memory_reserved()"] / results["vramguard sample"]
    print(f"one vramguard sample is {ratio:.1f}x cheaper than the pair (budget: <= 10 us per sample)")
    del keep


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--requests", type=int, default=6000)
    args = parser.parse_args()
    if args.device == "cuda":
        cuda()
    else:
        cpu(args.requests)


if __name__ == "__main__":
    main()
