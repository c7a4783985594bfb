"""Load ``vramguard check`` targets: ``path/to/file.py:func`` or ``package.module:func``.

A file target's folder goes first on ``sys.path`` (as ``python file.py``); for a module target the
current directory does (as ``python -m`` and uvicorn). What the target does wrong becomes a
:class:`~vramguard.errors.TargetFailed` (exit 4), a ``SystemExit`` included ("the target exited
with status N"); a target that needs torch where there is none is an environment problem (exit 3).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vramguard.errors import EnvironmentProblem, TargetFailed, UsageError

_PACKAGE = Path(__file__).resolve().parent
_DEMO = _PACKAGE / "demo"  # the demo's service is the demo's target: its frames stay
_IMPORTLIB = Path(importlib.__file__).resolve().parent


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
    # As `python -m` and uvicorn do: the current directory first, so `check app:handle` run from
    # app.py's folder finds it (the console script's own sys.path[0] is its bin folder).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        found = importlib.util.find_spec(module_part)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UsageError(f"target {spec!r}: no module named {module_part!r}")
    return _run_import(lambda: importlib.import_module(module_part), spec)


def exit_status(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives the shell: None is 0, a message is 1."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def missing_torch(exc: BaseException) -> EnvironmentProblem | None:
    """An :class:`EnvironmentProblem` (exit 3) when ``exc`` is torch failing to import."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "torch":
        return EnvironmentProblem(
            f"the target imports {exc.name}, which is not installed",
            hint="pip install torch (CPU only: pip install torch --index-url "
                 "https://download.pytorch.org/whl/cpu)")
    return None


def exited(spec: str, exc: SystemExit, *, completed: int, where: str) -> TargetFailed:
    """The error for a target that called ``sys.exit`` (exit 4, whatever status it asked for)."""
    detail = f": {exc.code}" if isinstance(exc.code, str) else ""
    failed = TargetFailed(f"the target exited with status {exit_status(exc)} {where}{detail} "
                          f"(target {spec!r})", completed=completed,
                          traceback_text=traceback.format_exc())
    failed.__cause__ = exc
    return failed


def target_traceback(exc: BaseException) -> str:
    """The target's traceback without vramguard's (and importlib's) frames: the user's code only.

    If nothing would be left (the error is vramguard's own), the full traceback is returned.
    """
    formatted = traceback.TracebackException.from_exception(exc)
    _trim(formatted, set())
    text = "".join(formatted.format())
    return text if "File " in text else "".join(traceback.format_exception(exc))


def _trim(formatted: traceback.TracebackException, seen: set[int]) -> None:
    if id(formatted) in seen:
        return
    seen.add(id(formatted))
    kept = [frame for frame in formatted.stack if _users(frame.filename)]
    formatted.stack = traceback.StackSummary.from_list(kept)
    for chained in (formatted.__cause__, formatted.__context__):
        if chained is not None:
            _trim(chained, seen)


def _users(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return False
    path = Path(filename).resolve()
    if path.is_relative_to(_IMPORTLIB):
        return False
    return not path.is_relative_to(_PACKAGE) or path.is_relative_to(_DEMO)


def _run_import(load: Callable[[], Any], spec: str) -> Any:
    try:
        return load()
    except SystemExit as exc:
        raise exited(spec, exc, completed=0, where="while being imported") from exc
    except Exception as exc:
        torch_missing = missing_torch(exc)
        if torch_missing is not None:
            raise torch_missing from exc
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
