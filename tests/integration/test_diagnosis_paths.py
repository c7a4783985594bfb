"""The path finder on real objects, its limits, and that a diagnosis leaves no references."""

from __future__ import annotations

import sys
import threading
import types

import torch

from vramguard.diagnosis import diagnose
from vramguard.diagnosis.causes import RootKind
from vramguard.diagnosis.paths import Limits, PathFinder


def test_finds_a_global_and_says_plainly_when_no_root() -> None:
    module = types.ModuleType("fake_app")
    module.results = [torch.zeros(2) for _ in range(3)]
    finder = PathFinder(modules={"fake_app": module})
    found = finder.find(module.results[2], "Tensor(2)")
    assert found.path is not None
    assert str(found.path) == "results (global list in module fake_app) -> [2] -> Tensor(2)"
    orphan = [torch.zeros(1)]
    lost = PathFinder(modules={}).find(orphan[0], "Tensor(1)")
    assert (lost.path is None and "no root" in lost.reason) or "no named root" in lost.reason


def test_depth_limit_is_reported() -> None:
    module = types.ModuleType("deep_app")
    nested: list[object] = [torch.zeros(1)]
    target = nested[0]
    for _ in range(6):
        nested = [nested]
    module.deep = nested
    found = PathFinder(Limits(max_depth=3), modules={"deep_app": module}).find(target, "T")
    assert found.path is None
    assert found.reason == "no root found within depth 3"
    deep = PathFinder(Limits(max_depth=10), modules={"deep_app": module}).find(target, "T")
    assert deep.path is not None
    assert deep.path.root.name == "deep"


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
        tensor = box.pop()
        found = PathFinder(modules={}).find(tensor, "Tensor(3)")
        del tensor
        assert found.path is not None
        assert found.path.root.kind is RootKind.THREAD_FRAME
        assert str(found.path).startswith("held (local Tensor in worker() in thread holder)")
    finally:
        done.set()
        thread.join(10)


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
    after = [sys.getrefcount(t) for t in leaked]
    assert after[:3] == before
    assert len(set(after)) == 1
    leaked.clear()
