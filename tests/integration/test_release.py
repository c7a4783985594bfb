"""vramguard.release() on real objects: a tensor held only by a reference cycle is freed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch

import vramguard

MIB = 1024 * 1024


class Node:
    """Points at itself, so only the cycle collector can free it (and its tensor)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.me = self
        self.tensor = tensor


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    # Without this, an automatic collection could free the cycle before release() does.
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.usefixtures("no_automatic_gc")
def test_release_frees_a_tensor_held_by_a_cycle() -> None:
    Node(torch.zeros(2 * MIB))  # 8 MiB of float32, unreachable but not yet freed
    released = vramguard.release("cpu")
    assert isinstance(released, vramguard.Released)
    assert released.device == "cpu"
    assert released.freed_allocated == 8 * MIB
    assert released.collected >= 2  # the node and its __dict__ at least
    assert released.freed_reserved is None  # no caching allocator on CPU: unknown, not 0
    assert not released.cache_emptied
    assert "8.0 MiB of tensors" in str(released)


@pytest.mark.usefixtures("no_automatic_gc")
def test_release_frees_nothing_that_is_still_referenced() -> None:
    alive = Node(torch.zeros(MIB))
    released = vramguard.release("cpu")
    assert released.freed_allocated == 0
    assert released.allocated_before is not None
    assert released.allocated_before >= 4 * MIB
    del alive


def test_release_without_cuda_initialised_stays_on_cpu() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA is already initialised in this process")
    assert vramguard.release().device == "cpu"
    assert not torch.cuda.is_initialized()  # release() must not start CUDA by itself


def test_released_is_frozen() -> None:
    released = vramguard.release("cpu")
    with pytest.raises(AttributeError):
        released.collected = 0  # type: ignore[misc]


@pytest.mark.cuda
@pytest.mark.usefixtures("no_automatic_gc")
def test_release_returns_the_cuda_cache() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    Node(torch.zeros(64 * MIB, device="cuda"))  # 256 MiB held by a cycle
    released = vramguard.release()
    assert released.device.startswith("cuda")
    assert released.freed_allocated is not None
    assert released.freed_allocated >= 256 * MIB
    assert released.freed_reserved is not None
    assert released.freed_reserved >= 256 * MIB
    assert released.cache_emptied
