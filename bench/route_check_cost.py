"""Cost of the per-route leak check that decides whether to open a diagnosis window:
``decide(find_detection=False)`` on a route's sample history, flat and leaking, at 128 and 512
samples (the route book's cap). The web guard runs it on its background worker
(``adapters/checker.py``), never on a request's thread, at most once a second per route and, all
routes together, within 5% of the budget in CPU time (``web._CHECK_SHARE``): this cost is what
spaces the checks. The attribution's NNLS fit (~1-2 ms) comes on top.

Run: python bench/route_check_cost.py
"""

from __future__ import annotations

import random
import statistics
import time

from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import decide


def main() -> None:
    rng = random.Random(0)
    for count in (128, 512):
        for name, slope in (("flat", 0), ("leak", 100)):
            samples = [Sample(request=i, time=i * 0.01,
                              allocated=10**6 + slope * i + rng.randint(0, 5000))
                       for i in range(count)]
            decide(samples, find_detection=False)
            timings = []
            for _ in range(20):
                started = time.perf_counter()
                decide(samples, find_detection=False)
                timings.append(time.perf_counter() - started)
            print(f"{count} samples, {name}: median {statistics.median(timings) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
