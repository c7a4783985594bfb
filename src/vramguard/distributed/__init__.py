"""Distributed jobs: "rank 1 leaks" from one place, without collectives.

Each rank's guard publishes a compact summary to the job's own store from a background thread
(:func:`share`); any rank (:func:`table`) or any process outside the job (``vramguard ranks
--store HOST:PORT``) reads every rank's and gets one :class:`RankTable`, with the ranks that leak
(their own verdict, or growth far above the job's median) flagged and the stale or missing ones
shown as such. Importing this package imports neither torch nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vramguard.distributed.publish import Sharer, share
    from vramguard.distributed.ranktable import RankRow, RankStatus, RankTable
    from vramguard.distributed.summary import RankSummary, rank_verdict

_LAZY = {
    "share": "vramguard.distributed.publish",
    "Sharer": "vramguard.distributed.publish",
    "RankSummary": "vramguard.distributed.summary",
    "rank_verdict": "vramguard.distributed.summary",
    "RankTable": "vramguard.distributed.ranktable",
    "RankRow": "vramguard.distributed.ranktable",
    "RankStatus": "vramguard.distributed.ranktable",
}

__all__ = ["RankRow", "RankStatus", "RankSummary", "RankTable", "Sharer", "debug_handler",
           "rank_verdict", "share", "table"]


def debug_handler(timeout: str | float = "5s") -> Any:
    """A handler for ``torch.distributed.debug.start_debug_server(handlers=[...])`` whose page
    ``/vramguard`` shows the rank table (see :mod:`vramguard.distributed.debug`).
    :class:`~vramguard.errors.EnvironmentProblem` where the debug server's frontend (PyTorch
    2.10+, jinja2) is not available."""
    from vramguard.distributed.publish import seconds
    from vramguard.errors import EnvironmentProblem

    try:
        from vramguard.distributed.debug import VramguardHandler
    except ImportError as exc:
        raise EnvironmentProblem(f"torch's distributed debug server is not available here: "
                                 f"{exc}", hint="it needs PyTorch 2.10+ with jinja2 and aiohttp") from None
    return VramguardHandler(seconds(timeout, name="timeout"))


def table(timeout: str | float = "5s", store: Any = None, *, k: float | None = None,
          stale_after: str | float | None = None) -> RankTable:
    """Every rank's latest summary from ``store`` (default: the default process group's store),
    judged into a :class:`RankTable`. Reads over a connection of its own with ``timeout``
    (``"5s"`` or seconds) per store call and as a deadline over all ranks: it never waits for
    a rank. ``k``: the outlier threshold in MADs (default 5); ``stale_after``: how old a summary
    may be (default: 3 of the rank's publishing intervals). Needs no collective: call it on
    any rank, or on several."""
    from vramguard.distributed.publish import seconds
    from vramguard.distributed.ranktable import K_MADS, read_table

    timeout_s = seconds(timeout, name="timeout")
    stale_s = None if stale_after is None else seconds(stale_after, name="stale_after")
    return read_table(connect_own(store, timeout_s), timeout_s=timeout_s,
                      k=K_MADS if k is None else k, stale_after=stale_s)


def connect_own(store: Any, timeout_s: float) -> Any:
    """A connection of our own to ``store`` (None: the default process group's), for
    :func:`table` and readers that keep one (the training callbacks' rank-table reader)."""
    from vramguard.distributed.store import default_store, private_connection

    return private_connection(default_store() if store is None else store, timeout_s)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vramguard.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
