"""Each leak scenario of issue 3 §9, checked in process: the top suspect names the right cause,
the right root variable and the right allocation line (the line marked ``# LEAK``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramguard.diagnosis import Cause, diagnose
from vramguard.diagnosis.engine import Diagnosis
from vramguard.runner import run_check
from vramguard.target import load_target

SCENARIOS = Path(__file__).parent / "diagnosis_scenarios"

# scenario -> (cause, text the held_by path must start with, variable the fix must name)
EXPECTED = {
    "graph_outputs": (Cause.AUTOGRAD_GRAPH, "results (global list", "`results`"),
    "total_loss": (Cause.AUTOGRAD_GRAPH, "total (global Tensor", "`total`"),
    "nograd_dict": (Cause.CONTAINER_GROWTH, "handle (global function", "`cache`"),
    "metrics_global": (Cause.GLOBAL_REFERENCE, "metrics (global dict", "`metrics`"),
    "hook_lambda": (Cause.HOOK_RETENTION, "activations (global list", "`activations`"),
    "hook_object": (Cause.HOOK_RETENTION, "recorder (global Recorder", "`outputs`"),
    "class_attribute": (Cause.GLOBAL_REFERENCE, "Service.seen (class attribute", "`Service.seen`"),
    "default_argument": (Cause.CONTAINER_GROWTH, "history (default argument of predict()",
                         "`history`"),
    "callbacks": (Cause.CONTAINER_GROWTH, "callbacks (global list", "`callbacks`"),
    "every_nth": (Cause.GLOBAL_REFERENCE, "kept (global list", "`kept`"),
    "late_leak": (Cause.GLOBAL_REFERENCE, "late (global list", "`late`"),
}


def leak_line(path: Path) -> int:
    """The 1-based number of the line marked ``# LEAK`` (exactly one per scenario)."""
    lines = [n for n, text in enumerate(path.read_text().splitlines(), 1) if "# LEAK" in text]
    assert len(lines) == 1, f"{path.name} must mark exactly one line with # LEAK"
    return lines[0]


def _diagnose(name: str) -> tuple[Path, Diagnosis]:
    path = SCENARIOS / f"{name}.py"
    handle = load_target(f"{path}:handle")
    for index in range(3):  # warm-up: lazy buffers and first-call caches are not the leak
        handle(index)
    # start=100: past the late leak's first request, as after a check of 100 requests
    return path, diagnose(handle, requests=20, start=100)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_top_suspect_names_cause_root_and_line(name: str) -> None:
    cause, held_by, variable = EXPECTED[name]
    path, diagnosis = _diagnose(name)
    top = diagnosis.suspects[0]
    assert top.cause == cause, top
    assert top.held_by is not None
    assert top.held_by.startswith(held_by), top.held_by
    assert top.fix is not None
    assert variable in top.fix, top.fix
    assert top.allocated_at is not None, top
    assert Path(top.allocated_at.file).resolve() == path.resolve()
    assert top.allocated_at.line == leak_line(path)
    assert top.stack
    assert top.stack[0] == top.allocated_at
    assert top.retained_bytes is not None
    assert top.retained_bytes > 0


def test_check_runs_the_window_after_a_leak_verdict() -> None:
    path = SCENARIOS / "graph_outputs.py"
    result = run_check("graph", load_target(f"{path}:handle"), requests=120, diagnosis_requests=20)
    assert result.verdict.is_leak, result.verdict.reason
    top = result.suspects[0]
    assert top.cause == Cause.AUTOGRAD_GRAPH
    assert top.allocated_at is not None
    assert top.allocated_at.line == leak_line(path)
    assert top.held_by is not None
    assert top.held_by.startswith("results (global list")


def test_clean_target_gets_no_window() -> None:
    calls: list[int] = []
    result = run_check("clean", calls.append, requests=120, diagnosis_requests=20)
    assert not result.verdict.is_leak
    assert len(calls) == 120  # no extra diagnosis requests
    calls.clear()


def test_hook_suspect_names_module_and_hook() -> None:
    fix = _diagnose("hook_lambda")[1].suspects[0].fix or ""
    assert "forward hook <lambda> at hook_lambda.py:" in fix, fix
    assert "on `model.1`" in fix, fix


def test_persistent_dataloader_worker_growth() -> None:
    path = SCENARIOS / "dataloader_workers.py"
    handle = load_target(f"{path}:handle")
    try:
        result = run_check("workers", handle, requests=40, warmup=5, diagnosis_requests=20)
    finally:
        handle.__globals__["loader"] = None  # shuts the persistent worker down
    top = result.suspects[0]
    assert top.cause == Cause.WORKER_PROCESS_GROWTH, result.suspects
    assert top.tensors is None
    assert top.held_by is not None
    assert top.held_by.startswith("loader (global DataLoader")
    assert top.retained_bytes is not None
    assert top.retained_bytes > 4 * 1024 * 1024
    assert "Samples.__getitem__() in dataloader_workers.py" in (top.fix or ""), top.fix
    assert "`loader`" in (top.fix or ""), top.fix
