"""What dense mode costs: ``vramguard check`` and the pytest marker against the same calls bare.

``check``: a 300-request run of a small model target (a clean one, and one that leaks outputs
with their graph, so the diagnosis window runs too), as one ``vramguard check`` process, against
one ``python -c`` process that imports the target and makes the same 300 calls: both include
interpreter start and ``import torch``. Marker: a pytest file with one test of 100 iterations
of a small model, with ``@pytest.mark.no_vram_leak(iterations=100)`` against the same loop of
100 calls without the marker, each timed by pytest's ``--durations`` (the test's call only).
Alternated ``--rounds`` times; medians printed.

Run: python bench/check_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TARGET = textwrap.dedent("""
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    kept = []

    def clean(i):
        with torch.no_grad():
            return model(torch.randn(16, 64)).sum().item()

    def leaky(i):
        kept.append(model(torch.randn(16, 64)))
""")

MARKED = textwrap.dedent("""
    import pytest
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))

    @pytest.mark.no_vram_leak(iterations=100)
    def test_marked():
        with torch.no_grad():
            model(torch.randn(16, 64)).sum().item()

    def test_bare():
        for _ in range(100):
            with torch.no_grad():
                model(torch.randn(16, 64)).sum().item()
""")


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=False, capture_output=True)
    return time.perf_counter() - started


def durations(cwd: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "pytest", "test_marked.py", "--durations=0",
                          "--durations-min=0", "-q", "-p", "no:cacheprovider"], cwd=cwd,
                         capture_output=True,
                         text=True, check=False).stdout
    found = re.findall(r"([\d.]+)s call\s+test_marked.py::(test_\w+)", out)
    return {name: float(seconds) for seconds, name in found}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "target.py").write_text(TARGET)
        (folder / "test_marked.py").write_text(MARKED)
        rows: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name in ("clean", "leaky"):
                bare = timed([sys.executable, "-c", f"import target\nfor i in range(300): "
                              f"target.{name}(i)"], folder)
                check = timed([sys.executable, "-m", "vramguard", "check",
                               f"target.py:{name}", "--requests", "300", "--device", "cpu"],
                              folder)
                rows.setdefault(f"check {name}: bare s", []).append(bare)
                rows.setdefault(f"check {name}: check s", []).append(check)
                rows.setdefault(f"check {name}: ratio", []).append(check / bare)
            found = durations(folder)
            if "test_marked" in found and "test_bare" in found:
                rows.setdefault("marker: marked s", []).append(found["test_marked"])
                rows.setdefault("marker: bare s", []).append(found["test_bare"])
        for name, values in rows.items():
            print(f"{name:28s} median {statistics.median(values):8.3f}  "
                  f"({', '.join(f'{v:.3f}' for v in values)})")
    print("targets: check ratio <= 3 (clean); marker <= 1.5 s per test")


if __name__ == "__main__":
    main()
