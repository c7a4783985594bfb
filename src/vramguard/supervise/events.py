"""What the supervisor reports: one value per event, printed for humans or as a JSON line.

Events go to stderr: the command's stdout is inherited and belongs to the command.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from vramguard.units import format_bytes, format_duration


class EventKind(enum.Enum):
    """The closed set of things the supervisor logs."""

    START = "start"  # the command's process was started
    BREACH = "breach"  # a limit held for --for; the supervisor starts stopping the command
    SIGNAL = "signal"  # a signal sent to the command's process group by the supervisor
    FORWARD = "forward"  # a signal the supervisor received and passed on
    EXIT = "exit"  # the command's process ended
    RESTART = "restart"  # the command will be started again after a delay
    GIVE_UP = "give_up"  # the supervisor stops for good with EXIT_GAVE_UP
    DONE = "done"  # the supervisor exits with the command's status
    WARNING = "warning"  # something the user should know (e.g. VRAM unknown)


@dataclass(frozen=True, slots=True)
class RankReading:
    """The memory of one rank of a distributed job in the tree: the process launched with that
    ``RANK`` (``pid``) and its descendants (data-loader workers inherit the variable)."""

    rank: int
    pid: int
    processes: int
    rss: int | None
    vram: int | None = None

    def label(self) -> str:
        """``rank 1 (pid 4242)``."""
        return f"rank {self.rank} (pid {self.pid})"

    def __str__(self) -> str:
        vram = "" if self.vram is None else f", vram {format_bytes(self.vram)}"
        return f"{self.label()}: rss {format_bytes(self.rss)}{vram}"


@dataclass(frozen=True, slots=True)
class Reading:
    """Memory of the command's process tree at one sample; ``None`` = not measured / unknown.
    ``ranks``: per rank, when the tree runs a distributed job (empty otherwise)."""

    processes: int
    rss: int | None
    vram: int | None
    vram_watched: bool = False  # False: VRAM was not asked for (NVML untouched), so not "unknown"
    ranks: tuple[RankReading, ...] = ()

    def largest(self, resource: str = "rss") -> RankReading | None:
        """The rank holding the most ``rss`` (or ``vram``); None outside a distributed job."""
        known = [r for r in self.ranks if getattr(r, resource) is not None]
        return max(known, key=lambda r: getattr(r, resource)) if known else None

    def __str__(self) -> str:
        vram = f", vram {format_bytes(self.vram)}" if self.vram_watched else ""
        text = (
            f"rss {format_bytes(self.rss)}{vram} in "
            f"{self.processes} process{'es' if self.processes != 1 else ''}"
        )
        if self.ranks:
            text += "; " + ", ".join(str(r) for r in self.ranks)
        return text


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened; ``message`` is the human sentence, the other fields are data."""

    kind: EventKind
    message: str
    pid: int | None = None
    reading: Reading | None = None
    signal: str | None = None
    status: int | None = None
    restarts: int | None = None
    delay: float | None = None

    def __str__(self) -> str:
        text = self.message
        if self.reading is not None:
            text += f" (memory seen: {self.reading})"
        return text

    def to_json(self, wall_time: float) -> dict[str, Any]:
        """A JSON-ready mapping; unknown values are ``None`` (``null``)."""
        return {
            "event": self.kind.value,
            "time": dt.datetime.fromtimestamp(wall_time, dt.UTC).isoformat(),
            "pid": self.pid,
            "message": self.message,
            "rss_bytes": self.reading.rss if self.reading else None,
            "vram_bytes": self.reading.vram if self.reading else None,
            "processes": self.reading.processes if self.reading else None,
            "ranks": [{"rank": r.rank, "pid": r.pid, "processes": r.processes,
                       "rss_bytes": r.rss, "vram_bytes": r.vram}
                      for r in self.reading.ranks] if self.reading else [],
            "signal": self.signal,
            "status": self.status,
            "restarts": self.restarts,
            "delay_s": self.delay,
        }


class EventLog:
    """Writes events to a stream, one line each: ``vramguard supervise: ...`` or JSON."""

    def __init__(
        self, stream: TextIO, *, as_json: bool = False, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.stream = stream
        self.as_json = as_json
        self.wall_clock = wall_clock

    def emit(self, event: Event) -> None:
        """Write one event and flush, so a log collector sees it before the supervisor exits."""
        if self.as_json:
            line = json.dumps(event.to_json(self.wall_clock()), sort_keys=True)
        else:
            line = f"vramguard supervise: {event}"
        self.stream.write(line + "\n")
        self.stream.flush()


def rank_note(reading: Reading, resource: str) -> str:
    """``"; most in rank 1 (pid 4242): rss 1.1 GiB"`` for a breach of ``resource`` (``rss`` or
    ``vram``) in a distributed job: which rank to look at; empty outside one."""
    top = reading.largest(resource)
    return "" if top is None else f"; most in {top}"


def uptime(seconds: float) -> str:
    """``after 42s`` for exit messages."""
    return f"after {format_duration(seconds)}"
