"""The web adapters' settings, parsed and validated once (sizes and durations as people write them)."""

from __future__ import annotations

from dataclasses import dataclass

from vramguard.errors import UsageError
from vramguard.units import Percent, format_bytes, format_duration, parse_duration, parse_size

Size = int | Percent


def _size(name: str, value: str | int | None, *, allow_percent: bool = True) -> Size | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise UsageError(f"expected {name} to be a positive size like 20GiB or 90%, got {value!r}")
    if isinstance(value, int):
        return value
    return parse_size(value, allow_percent=allow_percent)


def _duration(name: str, value: str | float) -> float:
    seconds = parse_duration(value) if isinstance(value, str) else float(value)
    if seconds <= 0:
        raise UsageError(f"expected {name} to be a positive duration like 30s or 1h, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class WebOptions:
    """What the middleware does besides counting requests. Build it with :meth:`parse`.

    ``unhealthy_within``: healthz fails when a leak is predicted to reach ``unhealthy_limit`` (or,
    without one, the device's capacity) within this many seconds. ``unhealthy_above`` /
    ``unhealthy_for``: healthz also fails when memory in use stayed above that size (or share of
    the device) for that long. ``cleanup_every``: run gc and release the allocator cache every N
    requests; ``cleanup_above``: ... whenever reserved minus allocated exceeds that many bytes.
    ``diagnose_requests``: once a route's verdict is a leak, its next N requests run in a diagnosis
    window (allocation sites, reference paths, cause and fix in ``status``); 0 turns it off.
    ``diagnose_every``: a route's window is opened again at most this often (seconds).
    """

    prefix: str = "/vramguard"
    expose_status: bool = False
    unhealthy_within: float = 3600.0
    unhealthy_limit: Size | None = None
    unhealthy_above: Size | None = None
    unhealthy_for: float = 300.0
    cleanup_every: int | None = None
    cleanup_above: int | None = None
    max_routes: int = 256
    diagnose_requests: int = 20
    diagnose_every: float = 600.0

    @classmethod
    def parse(
        cls,
        *,
        prefix: str = "/vramguard",
        expose_status: bool = False,
        unhealthy_within: str | float = "1h",
        unhealthy_limit: str | int | None = None,
        unhealthy_above: str | int | None = None,
        unhealthy_for: str | float = "5m",
        cleanup_every: int | None = None,
        cleanup_above: str | int | None = None,
        max_routes: int = 256,
        diagnose_requests: int = 20,
        diagnose_every: str | float = "10m",
    ) -> WebOptions:
        """Validate user-facing values; raises :class:`~vramguard.errors.UsageError` with a hint."""
        if not prefix.startswith("/") or prefix.endswith("/") or len(prefix) < 2:
            raise UsageError(f"expected prefix like '/vramguard' (leading '/', no trailing '/'), "
                             f"got {prefix!r}")
        if cleanup_every is not None and (isinstance(cleanup_every, bool) or cleanup_every < 1):
            raise UsageError(f"expected cleanup_every to be a positive number of requests, "
                             f"got {cleanup_every!r}")
        if max_routes < 1:
            raise UsageError(f"expected max_routes >= 1, got {max_routes!r}")
        if isinstance(diagnose_requests, bool) or diagnose_requests < 0:
            raise UsageError(f"expected diagnose_requests to be a number of requests (0: off), "
                             f"got {diagnose_requests!r}")
        above = _size("cleanup_above", cleanup_above, allow_percent=False)
        return cls(
            prefix=prefix,
            expose_status=bool(expose_status),
            unhealthy_within=_duration("unhealthy_within", unhealthy_within),
            unhealthy_limit=_size("unhealthy_limit", unhealthy_limit),
            unhealthy_above=_size("unhealthy_above", unhealthy_above),
            unhealthy_for=_duration("unhealthy_for", unhealthy_for),
            cleanup_every=cleanup_every,
            cleanup_above=above if isinstance(above, int) else None,
            max_routes=max_routes,
            diagnose_requests=diagnose_requests,
            diagnose_every=_duration("diagnose_every", diagnose_every),
        )

    def __str__(self) -> str:
        limit = "device capacity" if self.unhealthy_limit is None else (
            str(self.unhealthy_limit) if isinstance(self.unhealthy_limit, Percent)
            else format_bytes(self.unhealthy_limit))
        return (f"endpoints under {self.prefix} (status {'on' if self.expose_status else 'off'}); "
                f"unhealthy when a leak reaches {limit} within "
                f"{format_duration(self.unhealthy_within)}")
