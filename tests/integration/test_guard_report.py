"""``guard.report()``: after a leak verdict the Guard tracks sites for a window of steps, then
explains the leak off the step path; the Report prints, serialises and renders itself."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import vramguard  # noqa: E402
from vramguard import Guard, Report  # noqa: E402

model = torch.nn.Linear(16, 4)
history: list[object] = []


def train_step() -> None:
    batch = torch.randn(8, 16)
    loss = model(batch).pow(2).mean()
    history.append(loss)                    # the classic: keeps every loss and its graph


def test_the_guard_explains_a_leak_after_its_window(tmp_path: Path) -> None:
    history.clear()
    # What earlier tests left for the collector (run after test_examples_import: a free of
    # several MiB in the middle of these 60 steps, read as a falling trend) goes first.
    gc.collect()
    guard = Guard("cpu", overhead_budget=None, warmup=5, diagnose_steps=10)
    for _ in range(60):
        with guard.step():
            train_step()
    assert guard.verdict().is_leak          # opens the window: the next 10 steps are tracked
    for _ in range(10):
        with guard.step():
            train_step()
    report = guard.report("train_step")
    assert isinstance(report, Report)
    assert report.is_leak
    assert report.unit == "step"
    assert report.diagnosis is not None
    assert report.diagnosis.steps == 10
    first = report.suspects[0]
    assert first.allocated_at is not None
    assert first.allocated_at.file == __file__
    assert first.allocated_at.function == "train_step"
    assert first.held_by is not None
    assert first.held_by.startswith("history (global list")
    assert first.fix is not None
    assert (".item()" in first.fix or ".detach()" in first.fix)
    text = str(report)
    assert text.startswith("LEAK train_step on cpu after 70 steps")
    assert "/step" in text
    assert "/request" not in text
    assert "diagnosis: 10-step window" in text
    assert report.headline == "memory leak on cpu"
    document = report.to_dict()
    assert document["schema"] == "vramguard.check/1"
    assert document["unit"] == "step"
    assert document["suspects"][0]["held_by"] == first.held_by
    json.dumps(document)
    page = report.to_html(tmp_path / "report.html").read_text()
    assert "train_step" in page
    history.clear()


def test_diagnose_never_reports_without_sites_and_no_window() -> None:
    history.clear()
    guard = Guard("cpu", overhead_budget=None, warmup=5, diagnose="never", unit="request")
    for _ in range(60):
        with guard.step():
            train_step()
    report = guard.report("handler")
    assert report.is_leak
    assert report.diagnosis is None
    assert report.suspects
    assert report.suspects[0].allocated_at is None
    assert "after 60 requests" in str(report)
    history.clear()


def test_a_clean_guard_reports_no_leak_without_a_window() -> None:
    guard = Guard("cpu", overhead_budget=None, warmup=5)
    for _ in range(60):
        with guard.step(), torch.no_grad():
            model(torch.randn(8, 16)).sum().item()
    report = guard.report()
    assert report.verdict.kind is vramguard.VerdictKind.NO_LEAK
    assert report.suspects == ()
    assert report.diagnosis is None
    assert report.headline == "no memory leak on cpu"


def test_bad_guard_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="diagnose must be 'auto' or 'never', got 'always'"):
        Guard("cpu", diagnose="always")
    with pytest.raises(ValueError, match="unit must be 'step' or 'request', got 'batch'"):
        Guard("cpu", unit="batch")
    with pytest.raises(ValueError, match="diagnose_steps must be a positive number"):
        Guard("cpu", diagnose_steps=0)


# The first leak warning rendered the report, and rendering imported rich (466,432 B of the C
# heap here with its emoji table, ~0.7 MiB in the HF DDP job): a jump mid-window, on the very
# counter the Guard judges. A clean CPU DDP rank's early false alarm then read as a leak to the
# end of its run (CI, HF under torchrun). In a fresh process, so that rich is not already
# imported by the test session.
_FIRST_RENDER = """
import sys
import torch
from vramguard import Guard
from vramguard.readers.heap import HeapCounter
history = []
guard = Guard("cpu", overhead_budget=None, warmup=5, diagnose="never")
for _ in range(40):
    with guard.step():
        history.append(torch.randn(256))
report = guard.report("loop")
heap = HeapCounter()
before = heap.read()
text = str(report)
print(heap.read() - before, "rich._emoji_codes" in sys.modules)
"""


def test_the_first_report_does_not_move_the_heap_the_guard_watches() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FIRST_RENDER], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    moved, emoji_table = done.stdout.split()
    assert int(moved) < 64 << 10, moved       # was 466,432 B: rich imported by the render
    assert emoji_table == "False"


def test_report_text_keeps_colon_words_as_written() -> None:
    guard = Guard("cpu", overhead_budget=None, warmup=5, diagnose="never")
    for _ in range(30):
        with guard.step():
            pass
    assert ":thumbs_up:" in str(guard.report(":thumbs_up: route"))
