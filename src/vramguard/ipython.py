"""Jupyter/IPython: ``%load_ext vramguard`` guards every executed cell as one step.

    %load_ext vramguard
    ...                      # run cells as usual
    %vramguard               # the verdict and the report; %vramguard --json: the JSON document

Each cell is one Guard step (``pre_run_cell``/``post_run_cell``); a verdict every few cells opens
the diagnosis window after a leak, so the report names the cell that allocated the tensors
(``<cell 12>:3``). The output cache (``Out[12]``, ``_12``, ``_``) keeps every displayed value alive
and is named as the root of its own, with its fixes: end the cell with ``;``, ``%reset -f out``,
or ``InteractiveShell.cache_size = 0``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from typing import Any, cast

from vramguard.analysis.suspects import Site, Suspect
from vramguard.diagnosis.causes import Cause

CHECK_EVERY = 5  # cells between verdicts: cells are human-paced, a verdict costs milliseconds
_STATE = "_vramguard_cells"
# The names IPython's displayhook binds each displayed result to, in the user's namespace.
_OUTPUT_ROOT = re.compile(r"^(?P<name>Out|_oh|_\d+|_{1,3}) \((?:global|local) .*?\)(?= -> |$)"
                          r"(?: -> \[(?P<key>\d+)\])?")
_LAST_ERROR = re.compile(r"^(?P<name>last_traceback|last_value|last_exc) \(global .*? in "
                         r"module sys\)(?= -> |$)")
LAST_ERROR_FIX = ("the traceback of the last error keeps the frames of the cell it interrupted, "
                  "and their tensors: clear it with `sys.last_traceback = sys.last_value = None` "
                  "(IPython's `%tb` needs it), or free the tensors in the cell's `finally`")
_CELL_FILE = re.compile(r"^<ipython-input-(?P<n>\d+)-[0-9a-f]+>$")
OUTPUT_CACHE_FIX = ("IPython's output cache keeps every displayed result: end the cell with `;` "
                    "so its value is not displayed, clear it with `%reset -f out`, or turn it off "
                    "with `InteractiveShell.cache_size = 0` (in ipython_config.py)")


class _CensusSignal:
    """Stands in for the CPU heap counter so the live-tensor census is the notebook's signal."""

    available = False
    reason = ("in IPython the live-tensor census is the signal: the shell's own allocations "
              "(history, displayed reprs) move the C heap more than a cell's tensors, and cells "
              "are slow enough for a census each")

    def read(self) -> int | None:
        return None


class CellGuard:
    """The extension's state: one Guard over the shell's cells (made by ``%load_ext``)."""

    def __init__(self, shell: Any, *, device: str = "auto", **guard_options: Any) -> None:
        from vramguard.guard import Guard
        from vramguard.readers.device import resolve_device
        from vramguard.readers.heap import HeapCounter
        from vramguard.readers.sampler import Sampler

        options = {"overhead_budget": None, "diagnose_steps": 10, "unit": "step", **guard_options}
        self.shell = shell
        resolved = resolve_device(device)
        sampler = Sampler(resolved, heap=cast(HeapCounter, _CensusSignal()))
        self.guard = Guard(str(resolved), sampler=sampler, **options)
        self._step: Any = None

    def pre_run_cell(self, info: Any) -> None:
        """A cell starts: one step (``%vramguard`` itself is not one)."""
        if _is_own_magic(getattr(info, "raw_cell", "")):
            return
        self._step = self.guard.step()
        self._step.__enter__()

    def post_run_cell(self, result: Any) -> None:
        """A cell ended: close its step; every few cells a verdict (which opens the window)."""
        step, self._step = self._step, None
        if step is None:
            return
        error = getattr(result, "error_in_exec", None)
        step.__exit__(None if error is None else type(error), error, None)
        if self.guard.requests % CHECK_EVERY == 0:
            self.guard.verdict()

    def report(self) -> Any:
        """The Guard's report with cells and the output cache named as a notebook user sees them."""
        report = self.guard.report("notebook")
        return replace(report, suspects=tuple(notebook_suspect(s) for s in report.suspects))

    def magic(self, line: str) -> None:
        """``%vramguard [--json]``: print the verdict and the report."""
        options = shlex.split(line)
        unknown = [o for o in options if o != "--json"]
        if unknown:
            print(f"%vramguard: unknown option {unknown[0]!r} (expected --json)")
            return
        report = self.report()
        if "--json" in options:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(report, end="")


def notebook_suspect(suspect: Suspect) -> Suspect:
    """Pure: a suspect worded for a notebook: ``<cell 12>:3`` sites, the output cache as root."""
    allocated_at = _cell_site(suspect.allocated_at)
    stack = None if suspect.stack is None else tuple(
        _cell_site(s) or s for s in suspect.stack)
    changes: dict[str, Any] = {"allocated_at": allocated_at, "stack": stack}
    held_by = suspect.held_by or ""
    match = _OUTPUT_ROOT.match(held_by)
    traceback = _LAST_ERROR.match(held_by)
    if match is not None:
        changes["held_by"] = f"{_cache_entry(match.group('name'), match.group('key'))}" \
                             f"{held_by[match.end():]}"
        changes["cause"] = Cause.OUTPUT_CACHE
        changes["fix"] = OUTPUT_CACHE_FIX
    elif traceback is not None:
        changes["held_by"] = f"sys.{traceback.group('name')} (the last error's traceback keeps " \
                             f"the interrupted cell's frames){held_by[traceback.end():]}"
        changes["fix"] = LAST_ERROR_FIX
    elif suspect.fix is not None:
        changes["fix"] = _CELL_IN_TEXT.sub(lambda m: f"<cell {m.group('n')}>", suspect.fix)
    return replace(suspect, **changes)


def _cache_entry(name: str, key: str | None) -> str:
    # Out[12] and _12 are the same entry; name both, the way the user would look it up.
    if name in ("Out", "_oh") and key is not None:
        return f"Out[{key}] (_{key}, IPython's output cache)"
    if name.startswith("_") and name[1:].isdigit():
        return f"Out[{name[1:]}] ({name}, IPython's output cache)"
    return f"{name} (IPython's output cache: the last results)"


_CELL_IN_TEXT = re.compile(r"<ipython-input-(?P<n>\d+)-[0-9a-f]+>")


def _cell_site(site: Site | None) -> Site | None:
    if site is None:
        return None
    match = _CELL_FILE.match(site.file)
    if match is None:
        return site
    return Site(f"<cell {match.group('n')}>", site.line, site.function)


def _is_own_magic(cell: str) -> bool:
    stripped = cell.strip()
    return stripped.startswith(("%vramguard", "%load_ext vramguard", "%unload_ext vramguard"))


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext vramguard``: register the cell hooks and the ``%vramguard`` magic (once)."""
    if getattr(shell, _STATE, None) is not None:
        return
    cells = CellGuard(shell)
    setattr(shell, _STATE, cells)
    shell.events.register("pre_run_cell", cells.pre_run_cell)
    shell.events.register("post_run_cell", cells.post_run_cell)
    shell.register_magic_function(cells.magic, magic_kind="line", magic_name="vramguard")


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext vramguard``: stop guarding cells."""
    cells = getattr(shell, _STATE, None)
    if cells is None:
        return
    shell.events.unregister("pre_run_cell", cells.pre_run_cell)
    shell.events.unregister("post_run_cell", cells.post_run_cell)
    setattr(shell, _STATE, None)
