"""Diagnosis accuracy and time per scenario, through `run_check` exactly as `vramguard check` runs.

For each scenario in tests/integration/diagnosis_scenarios/: a check of N requests (verdict), then
the diagnosis window; is the top suspect's cause, root variable and allocation line right? Time:
the whole check, and the diagnosis (window + analysis) measured inside it, as seconds and as a
share of the whole.

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
    print(f"| scenario | verdict | cause | root | line | whole check ({args.requests} requests) | "
          "diagnosis | share |")
    print("|---|---|---|---|---|---|---|---|")
    hits = 0
    mark = {True: "yes", False: "**no**"}
    for name in sorted(EXPECTED):
        cause, held_by, _variable = EXPECTED[name]
        path = SCENARIOS / f"{name}.py"
        started = time.perf_counter()
        result = run_check(name, load_target(f"{path}:handle"), requests=args.requests)
        full = time.perf_counter() - started
        sys.modules.pop(path.stem, None)
        diagnosis = result.diagnosis_seconds or 0.0
        top = result.suspects[0] if result.suspects else None
        cause_ok = top is not None and top.cause == cause
        root_ok = top is not None and (top.held_by or "").startswith(held_by)
        line_ok = (top is not None and top.allocated_at is not None
                   and top.allocated_at.line == leak_line(path))
        hits += cause_ok and root_ok and line_ok
        print(f"| {name} | {result.verdict.kind} | {mark[cause_ok]} | {mark[root_ok]} | "
              f"{mark[line_ok]} | {full:.1f} s | {diagnosis:.1f} s | {diagnosis / full:.0%} |")
    # The DataLoader scenario: the growth is in the worker process, so there is no allocation
    # line in this process to name; cause and root are checked.
    path = SCENARIOS / "dataloader_workers.py"
    handle = load_target(f"{path}:handle")
    started = time.perf_counter()
    try:
        result = run_check("workers", handle, requests=40, warmup=5, diagnosis_requests=20)
    finally:
        handle.__globals__["loader"] = None  # shuts the persistent worker down
    full = time.perf_counter() - started
    top = result.suspects[0] if result.suspects else None
    worker_ok = (top is not None and top.cause == "worker_process_growth"
                 and (top.held_by or "").startswith("loader (global DataLoader"))
    diagnosis = result.diagnosis_seconds or 0.0
    print(f"| dataloader_workers (40 requests) | {result.verdict.kind} | {mark[worker_ok]} | "
          f"{mark[worker_ok]} | n/a | {full:.1f} s | {diagnosis:.1f} s | {diagnosis / full:.0%} |")
    print(f"\nhit rate (cause, root and line all right): {hits}/{len(EXPECTED)}; "
          f"DataLoader workers (cause and root): {'yes' if worker_ok else 'no'}")


if __name__ == "__main__":
    main()
