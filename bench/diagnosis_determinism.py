"""Same heap, same answer: the diagnosis of every scenario and corpus leak, printed as one line
each (cause | held_by | allocated_at | fix), so two runs (a quiet machine, then two busy loops
running) can be compared with ``diff``.

Run: python bench/diagnosis_determinism.py > quiet.txt
     (python -c "while True: pass" & python -c "while True: pass" & ...) then again > busy.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_diagnosis_corpus import CORPUS, LEAKS, _cleanup  # noqa: E402
from tests.integration.test_diagnosis_scenarios import EXPECTED, SCENARIOS  # noqa: E402

from vramguard.diagnosis import diagnose  # noqa: E402
from vramguard.target import load_target  # noqa: E402


def line(name: str, path: Path, start: int, requests: int) -> str:
    handle = load_target(f"{path}:handle")
    try:
        for index in range(3):
            handle(index)
        top = diagnose(handle, requests=requests, start=start).suspects[0]
    finally:
        _cleanup(path.stem)
    site = None if top.allocated_at is None else f"{Path(top.allocated_at.file).name}:" \
        f"{top.allocated_at.line}"
    return f"{name} | {top.cause} | {top.held_by} | {site} | {top.fix}"


def main() -> None:
    for name in sorted(EXPECTED):
        print(line(name, SCENARIOS / f"{name}.py", 100, 20), flush=True)
    for name in sorted(LEAKS):
        print(line(name, CORPUS / f"{name}.py", 3, 12), flush=True)


if __name__ == "__main__":
    main()
