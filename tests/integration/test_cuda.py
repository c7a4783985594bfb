"""CUDA paths, run where a GPU is present (scripts/gpu-check); skipped elsewhere."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramguard import Guard, VerdictKind  # noqa: E402
from vramguard.readers.allocator import AllocatorReader  # noqa: E402
from vramguard.readers.device import resolve_device  # noqa: E402

pytestmark = pytest.mark.cuda


def test_allocator_reading_matches_the_public_counters():
    device = resolve_device("cuda")
    keep = torch.empty(1 << 20, device="cuda")
    reading = AllocatorReader(device).read()
    assert reading.allocated == torch.cuda.memory_allocated(device.index)
    assert reading.reserved == torch.cuda.memory_reserved(device.index)
    used, total = AllocatorReader(device).driver_used_total()
    assert total == torch.cuda.mem_get_info(device.index)[1]
    assert used >= reading.reserved
    del keep


def test_guard_finds_a_cuda_leak_and_names_the_group():
    guard = Guard("cuda", overhead_budget=None, census_every=1, warmup=10)
    kept = []
    for _ in range(120):
        with guard.step():
            kept.append(torch.randn(64, 64, device="cuda"))
    verdict = guard.verdict()
    assert verdict.kind is VerdictKind.LEAK
    assert verdict.capacity_bytes == torch.cuda.mem_get_info()[1]
    group, count, _size = guard.growing_tensors()[0]
    assert group.device.startswith("cuda")
    assert group.shape == (64, 64)
    assert count >= 100


def test_cached_blocks_are_not_a_leak():
    guard = Guard("cuda", overhead_budget=None, warmup=10)
    for step in range(150):
        with guard.step():
            scratch = torch.empty((step % 7 + 1) << 18, device="cuda")
            del scratch
    assert guard.verdict().kind is not VerdictKind.LEAK


def test_allocator_history_is_joined_to_user_sites():
    from vramguard.diagnosis.sites import SiteTracker

    tracker = SiteTracker()
    with tracker.active():
        kept = torch.empty(1 << 20, device="cuda")  # the line the history must name
    line = test_allocator_history_is_joined_to_user_sites.__code__.co_firstlineno + 5
    assert tracker._cuda_records, "the allocator history gave no user frames"
    site, stack = tracker.site_of(kept)
    assert site.line == line
    assert site.function == "test_allocator_history_is_joined_to_user_sites"
    assert stack[0] == site


cuda_results = []


def _cuda_leaky_handler(index):
    cuda_results.append(torch.randn(32, 32, device="cuda") * 2)  # LEAK


def test_check_diagnoses_a_cuda_leak():
    from vramguard.runner import run_check

    cuda_results.clear()
    result = run_check("cuda", _cuda_leaky_handler, requests=120, device="cuda")
    assert result.verdict.is_leak
    top = result.suspects[0]
    assert top.tensors is not None
    assert top.tensors.device.startswith("cuda")
    assert top.held_by is not None
    assert top.held_by.startswith("cuda_results (global list")
    assert top.allocated_at is not None
    assert top.allocated_at.function == "_cuda_leaky_handler"
    cuda_results.clear()
