"""Await what an ``async def`` target returns, on one event loop per run, or refuse it clearly.

A coroutine that is never awaited runs none of its body: a check of it would measure nothing and
call that "no leak". So every driver (check, demo, the pytest marker) passes each result through
:meth:`Awaiter.drive`, and what it cannot drive is a :class:`~vramguard.errors.UsageError`.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from vramguard.errors import UsageError


def undrivable(result: Any) -> str | None:
    """Pure: why ``result`` cannot be driven as one request, or None (plain values included)."""
    if inspect.isasyncgen(result):
        return ("an async generator: its body runs only when iterated (expected a function or "
                "an async def function that returns)")
    return None


class Awaiter:
    """Context manager: ``drive(result)`` returns plain results as they are and awaits awaitables
    on an event loop made on first need and closed on exit (one loop for the whole run)."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> Awaiter:
        return self

    def __exit__(self, *_exc: object) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def drive(self, result: Any) -> Any:
        """The request's value: ``result`` itself, or what awaiting it gives."""
        problem = undrivable(result)
        if problem is not None:
            raise UsageError(f"target {self._target!r} returned {problem}")
        if not inspect.isawaitable(result):
            return result
        if self._loop is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop running in this thread: the usual case
            else:
                _discard(result)
                raise UsageError(
                    f"target {self._target!r} returned an awaitable inside a running event loop; "
                    "expected run_check_async there (await it instead of run_check)")
            self._loop = asyncio.new_event_loop()
        if isinstance(result, asyncio.Future) and result.get_loop() is not self._loop:
            raise UsageError(
                f"target {self._target!r} returned a future of another event loop, which "
                "vramguard cannot drive (expected a coroutine: an async def function)")
        awaitable = result if inspect.iscoroutine(result) else _await(result)
        return self._loop.run_until_complete(awaitable)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _discard(result: Any) -> None:
    # A coroutine refused unawaited would warn "never awaited" at garbage collection.
    close = getattr(result, "close", None)
    if inspect.iscoroutine(result) and close is not None:
        close()
