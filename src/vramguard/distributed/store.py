"""Where rank summaries live: the job's own key-value store, under vramguard's key prefix.

torch.distributed jobs already run a ``TCPStore`` (torchrun's agent hosts it at
``MASTER_ADDR:MASTER_PORT``; ``init_process_group`` connects every rank to it). Summaries go to
that store's *root* (the default group wraps it in ``PrefixStore`` layers, which are unwrapped
here) so that ``vramguard ranks --store HOST:PORT`` finds them from outside the job with the
same key names. Only ``set``, ``check`` and ``get`` of keys that ``check`` found are used: no
collectives, no ``wait``, nothing that blocks on another rank.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from vramguard.errors import EnvironmentProblem, UsageError

PREFIX = "vramguard/v1/"
WORLD_KEY = PREFIX + "world_size"


def rank_key(rank: int) -> str:
    """The key of one rank's summary."""
    return f"{PREFIX}rank/{rank}"


def _torch_distributed() -> Any:
    try:
        import torch.distributed
    except ImportError:
        raise EnvironmentProblem("vramguard.distributed needs torch (torch.distributed), "
                                 "which is not installed") from None
    return torch.distributed


def root_store(store: Any) -> Any:
    """``store`` without its ``PrefixStore`` layers (the store every client sees alike)."""
    dist = _torch_distributed()
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return store


def default_store() -> Any:
    """The root of the default process group's store; :class:`EnvironmentProblem` when no
    default group is initialised (pass ``store=`` to use another one)."""
    dist = _torch_distributed()
    if not (dist.is_available() and dist.is_initialized()):
        raise EnvironmentProblem(
            "expected an initialised torch.distributed default process group to share through, "
            "got none", hint="call torch.distributed.init_process_group() first, or pass store=")
    return root_store(dist.distributed_c10d._get_default_store())


def private_connection(store: Any, timeout_s: float) -> Any:
    """A connection of our own to ``store`` with its own timeout, where the store can make one
    (``TCPStore.clone``): the job's connection, and its timeout, are left alone, and a slow
    store stalls only our thread. Other stores (``FileStore``, ``HashStore``) are used as given.
    """
    clone = getattr(store, "clone", None)
    if clone is None:
        return store
    try:
        own = clone()
        own.set_timeout(dt.timedelta(seconds=timeout_s))
    except Exception:  # a store type whose clone is unsupported: share the job's connection
        return store
    return own


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:29500`` for IPv6) -> (host, port); :class:`UsageError` otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"expected --store as HOST:PORT (e.g. 127.0.0.1:29500), got {text!r}")
    return host, int(port)


def connect(address: str, *, timeout_s: float) -> Any:
    """A read-only client of the store at ``address`` (never its server);
    :class:`EnvironmentProblem` (exit 3) when it cannot be reached within ``timeout_s``."""
    host, port = parse_address(address)
    dist = _torch_distributed()
    try:
        return dist.TCPStore(host, port, is_master=False, wait_for_workers=False,
                             timeout=dt.timedelta(seconds=timeout_s))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EnvironmentProblem(
            f"could not reach the store at {address} within {timeout_s:g}s: {first}",
            hint="use the job's MASTER_ADDR:MASTER_PORT, and check the job is still running"
        ) from None
