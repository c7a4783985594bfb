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
class Reading:
    """Memory of the command's process tree at one sample; ``None`` = not measured / unknown."""

    processes: int
    rss: int | None
    vram: int | None
    vram_watched: bool = False  # False: VRAM was not asked for (NVML untouched), so not "unknown"

    def __str__(self) -> str:
        vram = f", vram {format_bytes(self.vram)}" if self.vram_watched else ""
        return (
            f"rss {format_bytes(self.rss)}{vram} in "
            f"{self.processes} process{'es' if self.processes != 1 else ''}"
        )


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


def uptime(seconds: float) -> str:
    """``after 42s`` for exit messages."""
    return f"after {format_duration(seconds)}"
