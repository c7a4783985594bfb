"""Parse and print sizes and durations the way people write them ("20GiB", "90%", "5m").

Pure functions; every parse error is a :class:`~vramguard.errors.UsageError` naming the value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from vramguard.errors import UsageError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"^\s*{_NUMBER}\s*([a-zA-Z]*)\s*$")
_PERCENT_RE = re.compile(rf"^\s*{_NUMBER}\s*%\s*$")
_DURATION_RE = re.compile(rf"^\s*{_NUMBER}\s*(ms|s|m|h|d|)\s*$")


@dataclass(frozen=True, slots=True)
class Percent:
    """A limit given as a share of a device's capacity, resolved once the capacity is known."""

    value: float

    def of(self, total_bytes: int) -> int:
        """The limit in bytes for a device of ``total_bytes``."""
        return int(total_bytes * self.value / 100.0)

    def __str__(self) -> str:
        return f"{self.value:g}%"


def parse_size(text: str, *, allow_percent: bool = False) -> int | Percent:
    """Parse ``20GiB``, ``512MB``, ``1048576`` (bytes) or, when allowed, ``90%``.

    Where a percentage is allowed a bare number is refused (``90``: 90% or 90 bytes?), with a
    hint naming both.
    """
    percent = _PERCENT_RE.match(text)
    if percent:
        value = float(percent.group(1))
        if not allow_percent:
            raise UsageError(f"expected a size like 20GiB or 512MB, got {text!r}")
        if not 0 < value <= 100:
            raise UsageError(f"expected a percentage between 0 and 100, got {text!r}")
        return Percent(value)
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match and allow_percent and not unit:
        # "--threshold 90" is far more likely 90% than 90 bytes: say so rather than guess.
        number = match.group(1)
        raise UsageError(f"expected a size with a unit or a percentage, got {text!r}",
                         hint=f"write {number}% for a share, or {number}B for bytes")
    if not match or unit not in _SIZE_UNITS:
        expected = "a size like 20GiB, 512MB or 90%" if allow_percent else "a size like 20GiB or 512MB"
        raise UsageError(f"expected {expected}, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit or ""])


def parse_bytes(text: str) -> int:
    """Parse an absolute size (no percentage)."""
    size = parse_size(text)
    assert isinstance(size, int)  # parse_size refuses percentages unless allowed
    return size


def parse_duration(text: str) -> float:
    """Parse ``0.5s``, ``30s``, ``5m``, ``1h`` (a bare number is seconds) into seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise UsageError(f"expected a duration like 0.5s, 30s, 5m or 1h, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_interval(option: str, text: str) -> float:
    """A sampling interval: a positive duration. One rule for every command that samples."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise UsageError(f"expected {option} to be a positive duration like 0.5s or 1s, got {text!r}")
    return seconds


_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(value: float | None, *, signed: bool = False) -> str:
    """Binary units for humans: ``1.5 GiB``; ``+4.0 KiB`` when ``signed``; ``unknown`` for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    sign = ("+" if value >= 0 else "-") if signed else ("-" if value < 0 else "")
    magnitude = abs(value)
    for unit in _BINARY:
        if magnitude < 1024 or unit == _BINARY[-1]:
            break
        magnitude /= 1024
    if unit == "B":
        return f"{sign}{magnitude:.0f} B"
    return f"{sign}{magnitude:.1f} {unit}"


def format_duration(seconds: float | None) -> str:
    """``42s``, ``12m``, ``3.5h``, ``2.0d``; ``never`` for infinity; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    if math.isinf(seconds):
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
