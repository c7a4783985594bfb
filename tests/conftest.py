"""Shared test set-up: CUDA tests run only where a GPU is present."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: a red CI must mean a change, never a draw.
settings.register_profile("vramguard", derandomize=True, print_blob=True)
settings.load_profile("vramguard")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("cuda") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu-check on a GPU machine)")
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(skip)
