"""vramguard: find, explain and stop GPU memory leaks in long-running PyTorch services.

The public API is what ``__all__`` lists; everything else is private. Importing vramguard imports
neither torch nor numpy: the names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vramguard.errors import EnvironmentProblem, TargetFailed, UsageError, VramguardError

if TYPE_CHECKING:
    from vramguard.analysis.floor import Floor
    from vramguard.analysis.samples import Sample
    from vramguard.analysis.suspects import Site, Suspect, TensorGrowth
    from vramguard.analysis.verdict import Growth, Verdict, VerdictKind, decide
    from vramguard.guard import Guard
    from vramguard.oom import on_oom
    from vramguard.release import Released, release
    from vramguard.report import DiagnosisTimings, Report
    from vramguard.runner import CheckResult, run_check, run_check_async

__version__ = "0.1.0"

_LAZY = {
    "Guard": "vramguard.guard",
    "Verdict": "vramguard.analysis.verdict",
    "VerdictKind": "vramguard.analysis.verdict",
    "Growth": "vramguard.analysis.verdict",
    "decide": "vramguard.analysis.verdict",
    "Floor": "vramguard.analysis.floor",
    "Sample": "vramguard.analysis.samples",
    "Suspect": "vramguard.analysis.suspects",
    "Site": "vramguard.analysis.suspects",
    "TensorGrowth": "vramguard.analysis.suspects",
    "CheckResult": "vramguard.runner",
    "run_check": "vramguard.runner",
    "run_check_async": "vramguard.runner",
    "Report": "vramguard.report",
    "DiagnosisTimings": "vramguard.report",
    "on_oom": "vramguard.oom",
    "release": "vramguard.release",
    "Released": "vramguard.release",
}

__all__ = [
    "CheckResult",
    "DiagnosisTimings",
    "EnvironmentProblem",
    "Floor",
    "Growth",
    "Guard",
    "Released",
    "Report",
    "Sample",
    "Site",
    "Suspect",
    "TargetFailed",
    "TensorGrowth",
    "UsageError",
    "Verdict",
    "VerdictKind",
    "VramguardError",
    "__version__",
    "decide",
    "load_ipython_extension",
    "on_oom",
    "release",
    "run_check",
    "run_check_async",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext vramguard``: guard each executed cell as one step (see :mod:`vramguard.ipython`)."""
    from vramguard.ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext vramguard``: stop guarding cells."""
    from vramguard.ipython import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vramguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
