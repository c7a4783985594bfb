"""Allocation sites: for every tensor storage created inside the diagnosis window, the innermost
frame in user code and a short stack of user frames.

Device-agnostic: a ``TorchDispatchMode`` sees every aten op (factory functions included) and
records the op's *new* storages, keyed by ``(device index, data pointer)``. Nothing is kept
alive: each record carries a weak reference to its storage (a C++ weak pointer, not a Python
object), so a record dies with its storage: a freed temporary's address reused by a tensor born
outside the window (another thread, a C extension) answers "no site", never the temporary's
line. On CUDA the allocator's own history (``torch.cuda.memory._record_memory_history``, bounded
``max_entries``) is joined by block address for storages the dispatcher did not see.

The cost (a frame walk per op) is paid only while the window is open: see
``bench/diagnosis_window.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from vramguard._torch import require_torch
from vramguard.analysis.suspects import Site

_log = logging.getLogger("vramguard")
RawSite = tuple[str, int, str]  # (file, line, function): Site objects are built only when asked
Record = tuple[RawSite, tuple[RawSite, ...]]


def _package_dir(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


class FrameFilter:
    """Decides which source files are user code: not torch, not the stdlib, not vramguard.

    vramguard's bundled demo service counts as user code (it plays the user's service).
    """

    def __init__(self, excluded: tuple[str, ...] | None = None,
                 included: tuple[str, ...] | None = None) -> None:
        if excluded is None:
            import vramguard

            torch = require_torch()
            paths = sysconfig.get_paths()
            excluded = (_package_dir(torch), _package_dir(vramguard),
                        os.path.join(paths["stdlib"], ""), os.path.join(paths["platstdlib"], ""))
            included = (os.path.join(_package_dir(vramguard), "demo", ""),)
        self._excluded = excluded
        self._included = included or ()
        self._cache: dict[str, bool] = {}

    def is_user(self, filename: str) -> bool:
        """True for a file the user wrote (cached per file name)."""
        known = self._cache.get(filename)
        if known is None:
            if filename.startswith("<"):
                # <frozen importlib>, <string>: not a line the user can open; an IPython cell
                # (<ipython-input-12-...>) is the user's code (h10: the Jupyter extension).
                known = filename.startswith("<ipython-input-")
            else:
                path = os.path.abspath(filename)
                known = path.startswith(self._included) or not path.startswith(self._excluded)
            self._cache[filename] = known
        return known

    def user_stack(self, frame: FrameType | None, depth: int) -> tuple[RawSite, ...]:
        """Up to ``depth`` user frames from ``frame`` outwards, innermost first."""
        found: list[RawSite] = []
        while frame is not None and len(found) < depth:
            code = frame.f_code
            if self.is_user(code.co_filename):
                found.append((code.co_filename, frame.f_lineno, code.co_name))
            frame = frame.f_back
        return tuple(found)


class SiteTracker:
    """Records allocation sites while active (``with tracker.active(): ...``).

    ``site_of(tensor)`` answers afterwards, for as long as the tracker lives. ``max_records``
    bounds memory: past it the tracker stops recording (and says so once in the log).
    """

    def __init__(self, *, stack_depth: int = 6, max_records: int = 200_000,
                 frames: FrameFilter | None = None, cuda_history: bool = True) -> None:
        self._torch = require_torch()
        self._frames = frames or FrameFilter()
        self._depth = stack_depth
        self._max = max_records
        self._records: dict[tuple[int, int], Record] = {}
        # key -> the storage's weak reference (a cdata int); freed with the tracker
        self._weak: dict[tuple[int, int], int] = {}
        self._storage = self._torch.UntypedStorage
        self._cuda_records: dict[int, Record] = {}
        self._cuda_history = cuda_history
        self._full = False

    @property
    def records(self) -> int:
        """How many storages have a recorded site."""
        return len(self._records) + len(self._cuda_records)

    @contextmanager
    def active(self) -> Iterator[SiteTracker]:
        """Track allocations inside the block (this thread; the CUDA history sees all threads)."""
        mode = _make_mode(self)
        history = self._cuda_history and self._start_cuda_history()
        try:
            with mode:
                yield self
        finally:
            if history:
                self._stop_cuda_history()

    def warm(self) -> None:
        """Pay the dispatch mode's one-off first activation now, in this thread: called by a
        window's own thread before the first tracked request, which on an event loop would
        otherwise stall every other request for as long (it was ~1 s of imports before
        ``_make_mode`` stopped torch from importing dynamo; what is left is small, but it is
        not a request's to pay). Records nothing: no user frame is on this thread's stack."""
        with _make_mode(self):
            self._torch.zeros(1).add_(1)

    def record_op(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None, out: Any) -> None:
        """Record the new storages among an op's outputs (called by the dispatch mode)."""
        if self._full:
            return
        tensor_type = self._torch.Tensor
        outputs = [out] if isinstance(out, tensor_type) else (
            [o for o in out if isinstance(o, tensor_type)] if isinstance(out, tuple | list) else [])
        if not outputs:
            return
        inputs = {_key(a) for a in _tensor_args(args, kwargs, tensor_type)}
        record: Record | None = None
        for tensor in outputs:
            key = _key(tensor)
            if key is None or key in inputs:
                continue  # a view, an in-place op or an ``out=`` argument: not a new storage
            if record is None:
                stack = self._frames.user_stack(sys._getframe(2), self._depth)
                if not stack:
                    return  # allocated by torch or vramguard themselves
                record = (stack[0], stack)
            self._records[key] = record
            self._remember(key, tensor)
        if len(self._records) > self._max:
            self._full = True
            _log.warning("vramguard: the diagnosis window recorded %d storages; it stops recording",
                         self._max)

    def _remember(self, key: tuple[int, int], tensor: Any) -> None:
        old = self._weak.pop(key, None)
        if old is not None:
            self._storage._free_weak_ref(old)
        # a storage without weak references is kept by key only
        with contextlib.suppress(RuntimeError, AttributeError):
            self._weak[key] = tensor.untyped_storage()._weak_ref()

    def _stale(self, key: tuple[int, int]) -> bool:
        weak = self._weak.get(key)
        return weak is not None and bool(self._storage._expired(weak))

    def __del__(self) -> None:
        weak, self._weak = getattr(self, "_weak", {}), {}
        free = getattr(getattr(self, "_storage", None), "_free_weak_ref", None)
        if free is not None:
            for cdata in weak.values():
                free(cdata)

    def site_of(self, tensor: Any) -> tuple[Site, tuple[Site, ...]] | None:
        """(allocated_at, stack) of ``tensor``'s storage, or ``None`` if born outside the window
        (or its record's storage died: the address now belongs to another storage)."""
        key = _key(tensor)
        record = None if key is None or self._stale(key) else self._records.get(key)
        if record is None and key is not None and key[0] >= 0:
            record = self._cuda_records.get(key[1])
        if record is None:
            return None
        return Site(*record[0]), tuple(Site(*raw) for raw in record[1])

    # -- CUDA allocator history ------------------------------------------------------------------
    def _start_cuda_history(self) -> bool:
        cuda = self._torch.cuda
        if not cuda.is_available():
            return False
        try:
            cuda.memory._record_memory_history(max_entries=20_000, stacks="python")
        except Exception:  # private API: absent or changed in this torch build
            _log.warning("vramguard: CUDA allocator history unavailable", exc_info=True)
            return False
        return True

    def _stop_cuda_history(self) -> None:
        cuda = self._torch.cuda
        try:
            snapshot = cuda.memory._snapshot()
            self._cuda_records.update(self._join_snapshot(snapshot))
        except Exception:
            _log.warning("vramguard: reading the CUDA allocator history failed", exc_info=True)
        finally:
            cuda.memory._record_memory_history(enabled=None)

    def _join_snapshot(self, snapshot: dict[str, Any]) -> dict[int, Record]:
        """Address -> user site for every live block the history has a stack for."""
        joined: dict[int, Record] = {}
        for segment in snapshot.get("segments", ()):
            for block in segment.get("blocks", ()):
                if block.get("state") != "active_allocated":
                    continue
                stack = tuple((f["filename"], int(f["line"]), f["name"])
                              for f in block.get("frames", ())
                              if self._frames.is_user(f.get("filename", "<")))[:self._depth]
                if stack:
                    joined[int(block["address"])] = (stack[0], stack)
        return joined


def _key(tensor: Any) -> tuple[int, int] | None:
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None  # sparse, meta or functional tensors: no plain storage to key by
    return None if pointer == 0 else (tensor.get_device(), pointer)


def _tensor_args(args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                 tensor_type: type) -> Iterator[Any]:
    for value in (*args, *(kwargs or {}).values()):
        if isinstance(value, tensor_type):
            yield value
        elif isinstance(value, tuple | list):
            yield from (v for v in value if isinstance(v, tensor_type))


def _make_mode(tracker: SiteTracker) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    # torch wraps a mode's __torch_dispatch__ so that torch.compile never traces into it, and the
    # wrapper imports torch._dynamo at the mode's first op: ~850 modules, 0.8-2.3 s of CPU in a
    # running server (most of the "first activation" cost, with GIL holds of 100-280 ms from the
    # collections that the imports set off; measured with bench/web_diagnosis_latency.py --stalls).
    # A process that has not imported dynamo has compiled nothing, so there is nothing to keep
    # out of our frames: opt out through the class hook torch documents for it. Once dynamo is
    # loaded (a process that compiles), the next activation makes the class again, with torch's
    # default. Only the ops of the one request that imports dynamo for the first time run with
    # the unwrapped mode: compile might then trace into this frame, which costs a graph break.
    unwrapped = "torch._dynamo" not in sys.modules

    class _SiteMode(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return not unwrapped

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                               kwargs: dict[str, Any] | None = None) -> Any:
            out = func(*args, **(kwargs or {}))
            try:
                tracker.record_op(args, kwargs, out)
            except Exception:  # recording must never break the user's op
                _log.debug("vramguard: recording a site failed", exc_info=True)
            return out

    return _SiteMode()
