"""The leak verdict on its scenario set: false alarms, misses, detection delay and cost.

Every scenario of ``tests/unit/series.py`` (warm-up, caches, flushes, batch noise, GC cycles,
small / every-Nth / late / big leaks) x ``--seeds`` seeds, ``--requests`` requests each. Reports
false alarms (a no-leak scenario called a leak: must be 0), misses (a leak not called a leak:
must be 0), median ``detected_after`` per leak scenario, and the cost of ``decide`` (with
detection) against a plain ``scipy.stats.linregress`` of the same series, measured in the same
run, as a ratio.

    python bench/verdict_scenarios.py [--seeds 20] [--requests 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.unit import series  # the scenario generators live with the tests

from vramguard.analysis.verdict import VerdictKind, decide


def _best_of(repeat: int, func: object, *args: object) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func(*args)  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def _baseline(samples: list[series.Sample]) -> None:
    # What people do today, minus the eyeballing: a least-squares slope of allocated bytes.
    x = np.array([s.request for s in samples], dtype=float)
    y = np.array([s.allocated for s in samples], dtype=float)
    stats.linregress(x, y)


def _noisy(seed: int, requests: int, per_request: float, sigma: float) -> list[series.Sample]:
    rng = np.random.default_rng(10_000 + seed)
    values = series.BASE + per_request * np.arange(requests) + rng.normal(0, sigma, requests)
    return series.samples_from(values, rng=rng)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    args = parser.parse_args()

    false_alarms = misses = runs = 0
    decide_times: list[float] = []
    baseline_times: list[float] = []
    print(f"{'scenario':24s} {'expected':8s} {'right':>7s} {'detected_after (median, max)':>30s}")
    for scenario in series.SCENARIOS:
        right = 0
        detected: list[int] = []
        for seed in range(args.seeds):
            samples = scenario.make(seed, args.requests)
            verdict = decide(samples)
            runs += 1
            is_leak = verdict.kind is VerdictKind.LEAK
            if scenario.expected is VerdictKind.LEAK:
                misses += not is_leak
            else:
                false_alarms += is_leak
            right += verdict.kind is scenario.expected
            if verdict.detected_after is not None:
                detected.append(verdict.detected_after)
            decide_times.append(_best_of(args.repeat, decide, samples))
            baseline_times.append(_best_of(args.repeat, _baseline, samples))
        delay = (f"{statistics.median(detected):.0f}, {max(detected)}" if detected else "-")
        print(f"{scenario.name:24s} {scenario.expected.value:8s} {right:>3d}/{args.seeds:<3d} "
              f"{delay:>30s}")

    # Beyond the scenario set: a leak too weak for the retained-level test, and flat noise. A
    # "no_leak" for the first is a false one; "inconclusive" is the honest answer until the run
    # is long enough.
    print()
    print(f"{'series (independent noise)':34s} {'leak':>5s} {'no_leak':>8s} {'inconclusive':>13s}")
    for name, per_request, sigma in (("+300 B/request under 20 KiB", 300.0, 20 * 1024.0),
                                     ("+666 B/request under 60 KiB", 666.0, 60 * 1024.0),
                                     ("flat under 20 KiB", 0.0, 20 * 1024.0)):
        kinds = [decide(_noisy(seed, args.requests, per_request, sigma),
                        find_detection=False).kind for seed in range(args.seeds)]
        print(f"{name:34s} {kinds.count(VerdictKind.LEAK):>5d} "
              f"{kinds.count(VerdictKind.NO_LEAK):>8d} "
              f"{kinds.count(VerdictKind.INCONCLUSIVE):>13d}")

    decide_ms = statistics.median(decide_times) * 1e3
    baseline_ms = statistics.median(baseline_times) * 1e3
    print()
    print(f"runs: {runs} ({len(series.SCENARIOS)} scenarios x {args.seeds} seeds x "
          f"{args.requests} requests)")
    print(f"false alarms: {false_alarms}   misses: {misses}")
    print(f"decide (with detection): median {decide_ms:.2f} ms, p95 "
          f"{np.percentile(decide_times, 95) * 1e3:.2f} ms, max {max(decide_times) * 1e3:.2f} ms")
    print(f"baseline linregress: median {baseline_ms:.3f} ms  ->  decide costs "
          f"{decide_ms / baseline_ms:.0f}x the baseline")
    return 1 if false_alarms or misses else 0


if __name__ == "__main__":
    sys.exit(main())
