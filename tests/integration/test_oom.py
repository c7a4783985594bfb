"""OOM post-mortems from real allocation failures: the report is written, the error propagates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vramguard
from vramguard import Guard
from vramguard.oom import is_out_of_memory

# One pebibyte: more than any host's RAM plus swap, so the kernel refuses it at once (no page
# is touched) and the CPU allocator raises its real "can't allocate memory" error.
HUGE = 2**50


def leaky_steps(guard: Guard, keep: list[torch.Tensor], count: int = 40) -> None:
    for _ in range(count):
        with guard.step():
            keep.append(torch.randn(256))


def test_guard_step_writes_the_report_and_reraises_the_same_error(tmp_path: Path) -> None:
    report = tmp_path / "oom.json"
    guard = Guard("cpu", overhead_budget=None, census_every=1, oom_report=report)
    keep: list[torch.Tensor] = []
    leaky_steps(guard, keep)
    with pytest.raises(RuntimeError) as raised, guard.step():
        torch.empty(HUGE, dtype=torch.uint8)
    assert is_out_of_memory(raised.value)
    document = json.loads(report.read_text())
    assert document["source"] == "exception"
    assert document["error"]["message"] == str(raised.value)
    assert document["requests"] == 40  # the report is written before the failed step ends
    assert document["verdict"]["kind"] == "leak"
    assert document["suspects"][0]["tensors"]["shape"] == [256]
    assert document["allocator"]["last_sample"]["allocated_bytes"] > 0
    assert guard.requests == 41


def test_track_decorator_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "oom.txt"
    guard = Guard("cpu", overhead_budget=None, oom_report=report)

    @guard.track
    def handler(size: int) -> torch.Tensor:
        return torch.empty(size, dtype=torch.uint8)

    handler(16)
    with pytest.raises(RuntimeError, match="allocate"):
        handler(HUGE)
    assert "DefaultCPUAllocator" in report.read_text()


def test_other_errors_write_no_report(tmp_path: Path) -> None:
    report = tmp_path / "oom.txt"
    guard = Guard("cpu", overhead_budget=None, oom_report=report)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), guard.step():
        torch.ones(2, 3) @ torch.ones(2, 3)
    assert not report.exists()


def test_on_oom_block_writes_the_report_and_reraises(tmp_path: Path) -> None:
    report = tmp_path / "oom.txt"
    watch = vramguard.on_oom(report)
    try:
        with pytest.raises(RuntimeError), watch:
            torch.empty(HUGE, dtype=torch.uint8)
    finally:
        watch.close()
    assert watch.reports == 1
    text = report.read_text()
    assert "source: exception" in text
    assert "verdict so far: unknown (no guard)" in text


SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import psutil, torch
    import vramguard

    guard = vramguard.Guard("cpu", overhead_budget=None, census_every=1, oom_report=sys.argv[1])
    keep = []
    for _ in range(40):
        with guard.step():
            keep.append(torch.randn(1024))
    # Address space for what exists now plus 256 MiB: a 1 GiB tensor cannot be had.
    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vms + 256 * 2**20, resource.RLIM_INFINITY))
    with guard.step():
        big = torch.empty(2**30, dtype=torch.uint8)
    print("unreachable: the step swallowed the error")
""")


def test_real_allocation_failure_under_an_address_space_limit(tmp_path: Path) -> None:
    report = tmp_path / "oom.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(report)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "unreachable" not in done.stdout
    assert "RuntimeError" in done.stderr  # the error reached the top, with its traceback
    document = json.loads(report.read_text())
    assert document["error"]["type"] == "RuntimeError"
    assert "1073741824 bytes" in document["error"]["message"]
    assert document["verdict"]["kind"] == "leak"
    assert document["problems"] == []


@pytest.mark.cuda
def test_cuda_observer_writes_the_report_for_an_oom_anywhere(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = tmp_path / "oom.json"
    watch = vramguard.on_oom(report)  # no block: the allocator's observer does the work
    try:
        _free, total = torch.cuda.mem_get_info()
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(total * 2, dtype=torch.uint8, device="cuda")
    finally:
        watch.close()
    document = json.loads(report.read_text())
    assert document["source"] == "cuda_observer"
    assert document["detail"]["requested_bytes"] >= total
    assert document["allocator"]["cuda"]["num_ooms"] >= 1


@pytest.mark.cuda
def test_cuda_guard_step_oom(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = tmp_path / "oom.txt"
    guard = Guard("cuda", overhead_budget=None, oom_report=report)
    _free, total = torch.cuda.mem_get_info()
    with pytest.raises(torch.OutOfMemoryError), guard.step():
        torch.empty(total * 2, dtype=torch.uint8, device="cuda")
    text = report.read_text()
    assert "OutOfMemoryError" in text
    assert "source: exception" in text
