"""The OOM post-mortem's pure parts: which errors are out-of-memory, and the report's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramguard.oom import is_out_of_memory, render_text, write_oom_report


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError (matched by class name through the MRO)."""


class Subclassed(OutOfMemoryError):
    pass


@pytest.mark.parametrize("error", [
    MemoryError(),
    OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    Subclassed("anything"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 1099511627776 bytes. Error code 12"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"),
    RuntimeError("CUDA error: out of memory"),
])
def test_out_of_memory_errors(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize("error", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    ValueError("out of memory"),  # not an allocator error type
    KeyError("memory"),
])
def test_other_errors(error: BaseException) -> None:
    assert not is_out_of_memory(error)


def test_report_without_a_guard_says_the_verdict_is_unknown(tmp_path: Path) -> None:
    error = MemoryError("no room")
    written = write_oom_report(tmp_path / "oom.txt", error=error, device="cpu")
    assert written == tmp_path / "oom.txt"
    text = written.read_text()
    assert "error: MemoryError: no room" in text
    assert "verdict so far: unknown (no guard)" in text
    assert "process_rss_bytes" in text
    assert not list(tmp_path.glob(".*partial"))  # written atomically, nothing left behind


def test_json_report_by_suffix(tmp_path: Path) -> None:
    written = write_oom_report(tmp_path / "oom.json", error=MemoryError("x"), device="cpu",
                               source="exception")
    assert written is not None
    document = json.loads(written.read_text())
    assert document["schema"] == "vramguard.oom/1"
    assert document["error"] == {"type": "MemoryError", "message": "x"}
    assert document["verdict"] is None
    assert document["allocator"]["process_rss_bytes"] > 0
    assert render_text(document).startswith("vramguard OOM post-mortem")


def test_unwritable_report_returns_none_and_does_not_raise(tmp_path: Path) -> None:
    assert write_oom_report(tmp_path / "missing-dir" / "oom.txt", error=MemoryError()) is None
