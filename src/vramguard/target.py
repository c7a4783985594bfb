"""Load ``vramguard check`` targets: ``path/to/file.py:func`` or ``package.module:func``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vramguard.errors import TargetFailed, UsageError


def load_target(spec: str) -> Callable[[int], Any]:
    """Return a callable taking the request index, whatever the target's own signature."""
    module_part, sep, attribute = spec.rpartition(":")
    if not sep or not module_part or not attribute:
        raise UsageError(f"expected a target like app.py:handle or package.module:handle, got {spec!r}")
    module = _import(module_part, spec)
    function = module
    for name in attribute.split("."):
        if not hasattr(function, name):
            raise UsageError(f"target {spec!r}: {module_part!r} has no attribute {name!r}")
        function = getattr(function, name)
    if not callable(function):
        raise UsageError(f"target {spec!r} is a {type(function).__name__}, expected a callable")
    return _adapt(function, spec)


def _import(module_part: str, spec: str) -> Any:
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise UsageError(f"target {spec!r}: no such file {module_part!r}")
        # As `python file.py` would: the file's folder goes first on sys.path.
        sys.path.insert(0, str(path.resolve().parent))
        name = path.stem
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"target {spec!r}: cannot load {module_part!r} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        _run_import(lambda: module_spec.loader.exec_module(module), spec)  # type: ignore[union-attr]
        return module
    try:
        found = importlib.util.find_spec(module_part)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UsageError(f"target {spec!r}: no module named {module_part!r}")
    return _run_import(lambda: importlib.import_module(module_part), spec)


def _run_import(load: Callable[[], Any], spec: str) -> Any:
    try:
        return load()
    except Exception as exc:
        raise TargetFailed(
            f"target {spec!r} raised {type(exc).__name__} while being imported: {exc}",
            completed=0,
            traceback_text=traceback.format_exc(),
        ) from exc


def _adapt(function: Callable[..., Any], spec: str) -> Callable[[int], Any]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return lambda index: function()
    required = [
        p for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) > 1:
        names = ", ".join(p.name for p in required)
        raise UsageError(
            f"target {spec!r} takes {len(required)} required arguments ({names}); "
            "expected none, or one (the request index)"
        )
    if required:
        return function  # one positional parameter: it receives the request index
    return lambda index: function()
