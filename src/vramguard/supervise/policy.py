"""The supervisor's decisions, as pure functions and small state holders over plain values.

Nothing here touches a process, a signal or the clock: the runner passes ``now`` in, so every rule
(a limit held for ``--for``, exponential backoff, at most N restarts within a window, the restart
modes) is tested with plain numbers.
"""

from __future__ import annotations

import enum
import signal
from collections import deque
from dataclasses import dataclass

from vramguard.units import format_bytes, format_duration

#: Exit status when the supervisor stops the command over a limit and will not start it again
#: (restarts exhausted within the window, or ``--restart never``). Chosen outside the 0-4 range of
#: vramguard's other codes and away from the shell's 126/127/128+N, so a script can tell "the
#: supervisor gave up" from most exit statuses of the command itself (75 is sysexits' EX_TEMPFAIL:
#: an orchestrator may retry later).
EXIT_GAVE_UP = 75


class RestartMode(enum.Enum):
    """When a stopped command is started again (``--restart``)."""

    ON_FAILURE = "on-failure"  # after a crash (non-zero status or a signal) or a limit kill
    ALWAYS = "always"  # also after a clean exit (status 0)
    NEVER = "never"  # never; a limit kill then ends the supervisor with EXIT_GAVE_UP


class Resource(enum.Enum):
    """What a limit measures."""

    RSS = "rss"  # host resident memory of the command's process tree (psutil)
    VRAM = "vram"  # GPU memory of the command's process tree (NVML)


class StopCause(enum.Enum):
    """Why the command's process ended, which decides what happens next."""

    EXITED = "exited"  # it ended on its own (a clean exit or a crash)
    LIMIT = "limit"  # the supervisor stopped it over a memory limit
    FORWARDED = "forwarded"  # the supervisor received SIGINT/SIGTERM and passed it on


@dataclass(frozen=True, slots=True)
class Breach:
    """A limit that has been exceeded for at least the required time."""

    resource: Resource
    value: int
    limit: int
    held_for: float

    def __str__(self) -> str:
        return (
            f"{self.resource.value} {format_bytes(self.value)} above the limit of "
            f"{format_bytes(self.limit)} for {self.held_for:.1f}s"
        )


class LimitWatch:
    """Tracks whether one resource stayed above its limit for the whole ``hold_for`` duration.

    An unknown reading (``None``) breaks the streak: the supervisor kills only on memory it has
    seen above the limit for the whole duration, never on a gap in the data.
    """

    __slots__ = ("_above_since", "hold_for", "limit", "resource")

    def __init__(self, resource: Resource, limit: int, hold_for: float) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        if hold_for < 0:
            raise ValueError(f"hold_for must not be negative, got {hold_for}")
        self.resource = resource
        self.limit = limit
        self.hold_for = hold_for
        self._above_since: float | None = None

    def observe(self, value: int | None, now: float) -> Breach | None:
        """Feed one reading taken at ``now``; a :class:`Breach` once the limit held long enough."""
        if value is None or value <= self.limit:
            self._above_since = None
            return None
        if self._above_since is None:
            self._above_since = now
        held = now - self._above_since
        if held >= self.hold_for:
            return Breach(self.resource, value, self.limit, held)
        return None

    def reset(self) -> None:
        """Forget the streak (a new process starts from scratch)."""
        self._above_since = None

    def __repr__(self) -> str:
        return (
            f"LimitWatch({self.resource.value}, limit={self.limit}, hold_for={self.hold_for}, "
            f"above_since={self._above_since})"
        )


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delay before restart ``attempt`` (0-based): initial * factor**attempt, capped."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("backoff delays must not be negative")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before a restart that follows ``attempt`` earlier ones in the window."""
        if attempt < 0:
            raise ValueError(f"attempt must not be negative, got {attempt}")
        # Compare in the exponent's domain so a long run of restarts cannot overflow a float.
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def __str__(self) -> str:
        return f"{self.initial:g}s x{self.factor:g} up to {self.maximum:g}s"


class RestartBudget:
    """At most ``max_restarts`` restarts within any sliding ``window`` of seconds.

    Keeps only the restart times inside the window (at most ``max_restarts`` of them), so a
    supervisor that runs for months holds a bounded list.
    """

    __slots__ = ("_times", "max_restarts", "window")

    def __init__(self, max_restarts: int, window: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must not be negative, got {max_restarts}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.max_restarts = max_restarts
        self.window = window
        self._times: deque[float] = deque()

    def used(self, now: float) -> int:
        """Restarts recorded within the window ending at ``now``."""
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times)

    def exhausted(self, now: float) -> bool:
        """True when one more restart would exceed the budget."""
        return self.used(now) >= self.max_restarts

    def record(self, now: float) -> None:
        """Count a restart at ``now``."""
        self.used(now)
        self._times.append(now)

    def __repr__(self) -> str:
        return (f"RestartBudget(max_restarts={self.max_restarts}, window={self.window}, "
                f"times={list(self._times)})")


@dataclass(frozen=True, slots=True)
class ChildExit:
    """How a process ended, as ``subprocess`` reports it: a status, or minus the killing signal."""

    returncode: int

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed it, or None when it exited with a status."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:
            return None

    @property
    def success(self) -> bool:
        """True for a clean exit (status 0)."""
        return self.returncode == 0

    @property
    def shell_status(self) -> int:
        """The status a shell would report: the exit status, or 128 + signal number."""
        return self.returncode if self.returncode >= 0 else 128 - self.returncode

    def __str__(self) -> str:
        if self.returncode >= 0:
            return f"exited with status {self.returncode}"
        sig = self.signal
        return f"killed by {sig.name if sig else f'signal {-self.returncode}'}"


class Action(enum.Enum):
    """What the supervisor does after the command's process ended."""

    RESTART = "restart"
    EXIT = "exit"  # exit with the command's own status
    GIVE_UP = "give_up"  # exit with EXIT_GAVE_UP


@dataclass(frozen=True, slots=True)
class Decision:
    """The next step, with the delay before a restart and the supervisor's exit status otherwise."""

    action: Action
    reason: str
    delay: float | None = None
    exit_code: int | None = None

    def __str__(self) -> str:
        if self.action is Action.RESTART:
            return f"restart in {self.delay:g}s: {self.reason}"
        return f"{self.action.value} with status {self.exit_code}: {self.reason}"


def decide(
    *,
    mode: RestartMode,
    cause: StopCause,
    ended: ChildExit,
    restarts_in_window: int,
    max_restarts: int,
    window: float,
    backoff: Backoff,
) -> Decision:
    """Restart, exit with the command's status, or give up; pure, so every branch is unit-tested."""
    if cause is StopCause.FORWARDED:
        # The user (or the orchestrator) asked us to stop: pass the command's answer through.
        return Decision(Action.EXIT, f"stopped on request; the command {ended}",
                        exit_code=ended.shell_status)
    wanted = mode is RestartMode.ALWAYS or (
        mode is RestartMode.ON_FAILURE and (cause is StopCause.LIMIT or not ended.success)
    )
    if not wanted:
        if cause is StopCause.LIMIT:
            return Decision(Action.GIVE_UP, "stopped over a memory limit and --restart is never",
                            exit_code=EXIT_GAVE_UP)
        return Decision(Action.EXIT, f"the command {ended}", exit_code=ended.shell_status)
    if restarts_in_window >= max_restarts:
        return Decision(
            Action.GIVE_UP,
            f"{restarts_in_window} restart{'s' if restarts_in_window != 1 else ''} within "
            f"{format_duration(window)} already (--max-restarts {max_restarts})",
            exit_code=EXIT_GAVE_UP,
        )
    reason = "over a memory limit" if cause is StopCause.LIMIT else f"the command {ended}"
    return Decision(Action.RESTART, reason, delay=backoff.delay(restarts_in_window))
