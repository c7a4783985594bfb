"""vramguard: find, explain and stop GPU memory leaks in long-running PyTorch services.

The public API is what ``__all__`` lists; everything else is private. Importing vramguard does not
import torch: the names that need it load it on first use.
"""

from __future__ import annotations

from vramguard.errors import EnvironmentProblem, TargetFailed, UsageError, VramguardError

__version__ = "0.1.0"

__all__ = [
    "EnvironmentProblem",
    "TargetFailed",
    "UsageError",
    "VramguardError",
    "__version__",
]
