"""Diagnosis accuracy and time per scenario, through `run_check` exactly as `vramguard check` runs.

For each scenario in tests/integration/diagnosis_scenarios/: a check of N requests (verdict), then
the diagnosis window; is the top suspect's cause, root variable and allocation line right? Time is
split into the check itself and the diagnosis (window + analysis), the latter also as a ratio to
the check's own time per request.

Run: python bench/diagnosis_scenarios.py [--requests 120]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_diagnosis_scenarios import EXPECTED, SCENARIOS, leak_line  # noqa: E402
from vramguard.runner import run_check  # noqa: E402
from vramguard.target import load_target  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=120)
    args = parser.parse_args()
    print(f"| scenario | verdict | cause | root | line | check ({args.requests} req) | "
          "with diagnosis | diagnosis share |")
    print("|---|---|---|---|---|---|---|---|")
    hits = 0
    for name in sorted(EXPECTED):
        cause, held_by, _variable = EXPECTED[name]
        path = SCENARIOS / f"{name}.py"
        # Each scenario twice in fresh module state: without the window (the check alone) and
        # with it; the difference is what the diagnosis costs.
        started = time.perf_counter()
        run_check(name, load_target(f"{path}:handle"), requests=args.requests, diagnosis_requests=0)
        plain = time.perf_counter() - started
        sys.modules.pop(path.stem, None)
        started = time.perf_counter()
        result = run_check(name, load_target(f"{path}:handle"), requests=args.requests)
        full = time.perf_counter() - started
        sys.modules.pop(path.stem, None)
        top = result.suspects[0] if result.suspects else None
        cause_ok = top is not None and top.cause == cause
        root_ok = top is not None and (top.held_by or "").startswith(held_by)
        line_ok = (top is not None and top.allocated_at is not None
                   and top.allocated_at.line == leak_line(path))
        hits += cause_ok and root_ok and line_ok
        mark = {True: "yes", False: "**no**"}
        print(f"| {name} | {result.verdict.kind} | {mark[cause_ok]} | {mark[root_ok]} | "
              f"{mark[line_ok]} | {plain:.1f} s | {full:.1f} s | {(full - plain) / full:.0%} |")
    print(f"\nhit rate (cause, root and line all right): {hits}/{len(EXPECTED)}")


if __name__ == "__main__":
    main()
