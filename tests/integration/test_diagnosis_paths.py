"""The retainer search on real objects: one snapshot, named roots, bounds by count, autograd
edges, and that a diagnosis leaves no references behind."""

from __future__ import annotations

import gc
import sys
import threading
import types

import pytest
import torch

from vramguard.diagnosis import diagnose
from vramguard.diagnosis.causes import RootKind
from vramguard.diagnosis.paths import Limits, PathFinder, Retainers


def test_finds_a_global_and_says_plainly_when_no_root() -> None:
    module = types.ModuleType("fake_app")
    module.results = [torch.zeros(2) for _ in range(3)]
    finder = PathFinder(modules={"fake_app": module}, frames=False)
    found = finder.find(module.results[2], "Tensor(2)")
    assert found.path is not None
    assert str(found.path) == "results (global list in module fake_app) -> [2] -> Tensor(2)"
    orphan = [torch.zeros(1)]
    lost = PathFinder(modules={}, frames=False).find(orphan[0], "Tensor(1)")
    assert lost.path is None
    assert lost.reason.startswith("no named root holds it"), lost.reason


def test_a_local_of_this_thread_is_a_root_too() -> None:
    kept = [torch.zeros(1)]
    found = PathFinder(modules={}).find(kept[0], "Tensor(1)")
    assert found.path is not None
    assert str(found.path).startswith(
        "kept (local list in test_a_local_of_this_thread_is_a_root_too() in thread MainThread)")


def test_depth_limit_is_reported() -> None:
    module = types.ModuleType("deep_app")
    nested: list[object] = [torch.zeros(1)]
    target = nested[0]
    for _ in range(6):
        nested = [nested]
    module.deep = nested
    found = PathFinder(Limits(max_depth=3), modules={"deep_app": module}, frames=False).find(
        target, "T")
    assert found.path is None
    assert found.reason == "no root found: the walk stopped at depth 3"
    deep = PathFinder(Limits(max_depth=10), modules={"deep_app": module}, frames=False).find(
        target, "T")
    assert deep.path is not None
    assert deep.path.root.name == "deep"
    assert str(deep.path).count("[0]") == 7


def test_object_limit_is_a_count() -> None:
    module = types.ModuleType("wide_app")
    module.wide = [[i] for i in range(2000)]
    module.wide.append([torch.zeros(1)])
    target = module.wide[-1][0]
    small = PathFinder(Limits(max_objects=100), modules={"wide_app": module}, frames=False)
    found = small.find(target, "T")
    assert found.path is None
    assert "stopped after" in found.reason, found.reason
    assert PathFinder(modules={"wide_app": module}, frames=False).find(target, "T").path


def test_thread_frame_is_a_root() -> None:
    ready, done = threading.Event(), threading.Event()
    box: list[torch.Tensor] = []

    def worker() -> None:
        held = torch.ones(3)
        box.append(held)
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=worker, name="holder")
    thread.start()
    try:
        ready.wait(10)
        retainers = Retainers([box[0]], modules={}, exclude=[box])
        try:
            found = retainers.find(box[0], "Tensor(3)")
        finally:
            retainers.close()
        assert found.path is not None
        assert found.path.root.kind is RootKind.THREAD_FRAME
        assert str(found.path).startswith("held (local Tensor in worker() in thread holder)")
    finally:
        box.clear()
        done.set()
        thread.join(10)


def test_saved_tensor_reached_through_the_graph() -> None:
    module = types.ModuleType("graph_app")
    weight = torch.randn(4, 4, requires_grad=True)
    hidden = torch.randn(2, 4) @ weight
    module.total = hidden.tanh().sum()  # tanh saves its output: only the graph holds it
    saved = module.total.grad_fn.next_functions[0][0]._saved_result
    found = PathFinder(modules={"graph_app": module}, frames=False).find(saved, "Tensor(2, 4)")
    del saved
    assert found.path is not None
    assert str(found.path) == ("total (global Tensor in module graph_app) -> .grad_fn graph "
                               "(saved by TanhBackward0) -> Tensor(2, 4)")


def test_same_heap_same_path() -> None:
    module = types.ModuleType("tie_app")
    shared = [torch.zeros(1)]
    module.a_first, module.b_second = {"k": shared}, {"k": shared}
    paths = {str(PathFinder(modules={"tie_app": module}, frames=False).find(shared[0], "T").path)
             for _ in range(5)}
    assert paths == {"a_first (global dict in module tie_app) -> ['k'] -> [0] -> T"}


leaked: list[torch.Tensor] = []


def _leaky(request: int) -> None:
    leaked.append(torch.randn(16, 16))


def test_diagnosis_leaves_reference_counts_unchanged() -> None:
    leaked.clear()
    for index in range(3):
        _leaky(index)
    before = [sys.getrefcount(t) for t in leaked]
    diagnosis = diagnose(_leaky, requests=10, start=3)
    assert diagnosis.suspects
    assert diagnosis.suspects[0].held_by is not None
    assert diagnosis.suspects[0].held_by.startswith("leaked (global list")
    gc.collect()
    after = [sys.getrefcount(t) for t in leaked]
    assert after[:3] == before
    assert len(set(after)) == 1
    leaked.clear()


def test_a_site_record_dies_with_its_storage() -> None:
    from vramguard.diagnosis.sites import SiteTracker

    tracker = SiteTracker(cuda_history=False)
    for _ in range(20):  # the CPU allocator hands a freed block straight back, usually
        with tracker.active():
            temporary = torch.randn(64, 64)
        address = temporary.untyped_storage().data_ptr()
        assert tracker.site_of(temporary) is not None
        del temporary
        later = torch.randn(64, 64)  # outside the window: no site of its own
        if later.untyped_storage().data_ptr() == address:
            assert tracker.site_of(later) is None
            return
    pytest.skip("the allocator never reused the freed address")
