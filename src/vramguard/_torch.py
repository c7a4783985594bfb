"""Import torch only when a feature needs it, with a message that says how to get it."""

from __future__ import annotations

import importlib
from types import ModuleType

from vramguard.errors import EnvironmentProblem


def require_torch() -> ModuleType:
    """Return the ``torch`` module or raise :class:`EnvironmentProblem` with an install hint."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise EnvironmentProblem(
            "this feature needs PyTorch, which is not installed",
            hint="pip install torch (CPU only: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu)",
        ) from exc
