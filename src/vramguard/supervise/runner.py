"""The supervisor loop: run a command in its own process group, watch its memory, restart it.

One :class:`Supervisor` owns one command. Decisions come from :mod:`.policy`; process calls from
:mod:`.procs`; memory readings from an injected :class:`~.probe.Probe` (host RSS through
psutil, VRAM through the NVML gateway), so a test can hand it its own readings.

Every exit path ends the command's whole process group and its strays: a normal exit cleans up the
leftovers of the command, and ``run``'s ``finally`` SIGKILLs what an error left behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

import psutil

from vramguard.errors import CommandNotStarted
from vramguard.supervise import procs
from vramguard.supervise.events import Event, EventKind, EventLog, Reading, rank_note, uptime
from vramguard.supervise.policy import (
    Action,
    Backoff,
    Breach,
    ChildExit,
    LimitWatch,
    Resource,
    RestartBudget,
    RestartMode,
    StopCause,
    decide,
)
from vramguard.supervise.probe import Probe
from vramguard.units import format_bytes, format_duration

#: Signals the supervisor passes on to the command's process group.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# How often clean-up re-checks whether the group is gone; a /proc scan each time, so not faster.
_POLL = 0.05
# Upper bound on waiting for processes to vanish after SIGKILL (they cannot refuse it; this only
# covers a process stuck in uninterruptible sleep, e.g. on a dead NFS mount or a hung GPU driver).
_AFTER_KILL = 5.0


@dataclass(frozen=True, slots=True)
class SuperviseConfig:
    """Everything ``vramguard supervise`` was told, resolved to plain values (bytes, seconds)."""

    command: tuple[str, ...]
    max_rss: int | None = None
    max_vram: int | None = None
    hold_for: float = 0.0
    grace: float = 10.0
    dump_signal: signal.Signals | None = None
    dump_wait: float = 2.0
    restart: RestartMode = RestartMode.ON_FAILURE
    max_restarts: int = 5
    window: float = 600.0
    backoff: Backoff = field(default_factory=Backoff)
    interval: float = 0.5

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("no command to supervise")
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, got {self.interval}")

    def __str__(self) -> str:
        pairs = (("rss", self.max_rss), ("vram", self.max_vram))
        limits = [f"{r} {format_bytes(v)}" for r, v in pairs if v is not None]
        return (
            f"supervise {' '.join(self.command)!r}: limits {', '.join(limits) or 'none'} "
            f"held {self.hold_for:g}s; restart {self.restart.value}, at most {self.max_restarts} "
            f"in {self.window:g}s; grace {self.grace:g}s"
        )


class Supervisor:
    """Runs ``config.command`` until it ends for good; :meth:`run` returns the exit status."""

    def __init__(
        self,
        config: SuperviseConfig,
        *,
        probe: Probe,
        log: EventLog,
        clock: Callable[[], float] = time.monotonic,
        adopt_orphans: bool = False,
        die_with_parent: bool = True,
    ) -> None:
        self.config = config
        self.probe = probe
        self.log = log
        self.clock = clock
        # Only the CLI adopts orphans: it makes the whole process a subreaper and reaps any child,
        # which a library caller (a test runner with children of its own) must not have done to it.
        self.adopt_orphans = adopt_orphans
        self.die_with_parent = die_with_parent
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._pending: deque[int] = deque(maxlen=16)  # bounded: a signal storm cannot grow it
        self._stop_signal: int | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._known: list[psutil.Process] = []
        self._last: Reading | None = None
        self._breach: Breach | None = None
        self._breach_rank = ""  # "; most in rank 1 (pid 4242): rss ..." in a distributed job
        self._vram_warned = False

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        """Note a SIGINT/SIGTERM/SIGHUP for the loop to forward; safe in a signal handler."""
        self._pending.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Install the forwarding handlers (main thread only) for the duration of the block.

        SIGCHLD gets a no-op handler so that, through the wake-up fd, the loop notices the
        command's exit at once instead of at the next sample.
        """
        def forward(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signum)

        def wake(signum: int, frame: FrameType | None) -> None:
            pass  # the wake-up fd did the work

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, wake)
        old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        """Release the wake-up pipe."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until the command ends for good; the status to exit with."""
        if self.adopt_orphans and not procs.become_subreaper():
            self.adopt_orphans = False
        try:
            return self._run()
        finally:
            self._kill_leftovers()

    def _run(self) -> int:
        cfg = self.config
        budget = RestartBudget(cfg.max_restarts, cfg.window)
        limits = ((Resource.RSS, cfg.max_rss), (Resource.VRAM, cfg.max_vram))
        watches = [LimitWatch(resource, limit, cfg.hold_for)
                   for resource, limit in limits if limit is not None]
        while True:
            child = self._start()
            started = self.clock()
            cause = self._watch(child.pid, watches)
            ended = self._finish(child)
            if self._stop_signal is not None:
                cause = StopCause.FORWARDED
            self.log.emit(Event(EventKind.EXIT, f"pid {child.pid} {ended} "
                                f"{uptime(self.clock() - started)}", pid=child.pid,
                                reading=self._last, status=ended.shell_status,
                                signal=ended.signal.name if ended.signal else None))
            now = self.clock()
            used = budget.used(now)
            decision = decide(mode=cfg.restart, cause=cause, ended=ended, restarts_in_window=used,
                              max_restarts=cfg.max_restarts, window=cfg.window, backoff=cfg.backoff)
            why = f"the command {ended}"
            if cause is StopCause.LIMIT and self._breach is not None:
                why = f"{self._breach}{self._breach_rank}"
            if decision.action is Action.RESTART:
                assert decision.delay is not None  # decide() sets it for every restart
                self.log.emit(Event(
                    EventKind.RESTART,
                    f"restart {used + 1}/{cfg.max_restarts} within {format_duration(cfg.window)} "
                    f"in {decision.delay:g}s: {why}",
                    pid=child.pid, reading=self._last, restarts=used + 1, delay=decision.delay))
                budget.record(now)
                if self._pause(decision.delay):
                    return self._done_on_signal()
                continue
            assert decision.exit_code is not None  # set for every exit and give-up
            if decision.action is Action.GIVE_UP:
                self.log.emit(Event(
                    EventKind.GIVE_UP,
                    f"gave up: {decision.reason}; last stop: {why}; "
                    f"exiting with status {decision.exit_code}",
                    pid=child.pid, reading=self._last, status=decision.exit_code, restarts=used))
            else:
                self.log.emit(Event(EventKind.DONE, f"exiting with status {decision.exit_code}: "
                                    f"{decision.reason}", pid=child.pid,
                                    status=decision.exit_code))
            return decision.exit_code

    def _start(self) -> subprocess.Popen[bytes]:
        cfg = self.config
        try:
            child = subprocess.Popen(  # the user's own argv, no shell
                cfg.command,
                start_new_session=True,  # its own session and process group, led by the child
                preexec_fn=procs.die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        except FileNotFoundError as exc:
            raise CommandNotStarted(f"command not found: {cfg.command[0]!r}",
                                    hint="give the full path or check PATH") from exc
        except PermissionError as exc:
            raise CommandNotStarted(f"command is not executable: {cfg.command[0]!r}",
                                    exit_code=126) from exc
        except OSError as exc:
            raise CommandNotStarted(f"could not start {cfg.command[0]!r}: {exc}",
                                    exit_code=126) from exc
        self._child = child
        self._known = []
        self._last = None
        self._breach = None
        self.log.emit(Event(EventKind.START, f"started pid {child.pid}: {' '.join(cfg.command)}",
                            pid=child.pid))
        return child

    def _watch(self, pid: int, watches: list[LimitWatch]) -> StopCause:
        """Sample until the command's process ends (it is left unreaped) or a limit holds."""
        for watch in watches:
            watch.reset()
        forwarded_at: float | None = None
        killed = False
        while True:
            if self._handle_pending(pid) and forwarded_at is None:
                forwarded_at = self.clock()
            if procs.leader_exited(pid):
                return StopCause.FORWARDED if self._stop_signal is not None else StopCause.EXITED
            overdue = forwarded_at is not None and self.clock() - forwarded_at >= self.config.grace
            if overdue and not killed:
                # The command was asked to stop and did not within --grace: it cannot refuse this.
                self._kill(pid, signal.SIGKILL, f"after {self.config.grace:g}s grace")
                killed = True
            tree = procs.tree(pid, adopted=self.adopt_orphans)
            self._known = tree
            reading = self.probe.read(tree)
            self._last = reading
            self._warn_unknown_vram(reading)
            if self._stop_signal is None:
                now = self.clock()
                for watch in watches:
                    value = reading.rss if watch.resource is Resource.RSS else reading.vram
                    breach = watch.observe(value, now)
                    if breach is not None:
                        self._breach = breach
                        self._breach_rank = rank_note(reading, watch.resource.value)
                        self.log.emit(Event(EventKind.BREACH,
                                            f"pid {pid}: {breach}{self._breach_rank}; stopping it",
                                            pid=pid, reading=reading))
                        self._escalate(pid)
                        return StopCause.LIMIT
            if self.adopt_orphans:
                procs.reap_adopted(exclude=pid)
            self._wait(self.config.interval)

    def _escalate(self, pgid: int) -> None:
        """--dump-signal, then SIGTERM to the group, then SIGKILL once --grace has passed."""
        cfg = self.config
        if cfg.dump_signal is not None:
            self._kill(pgid, cfg.dump_signal, "(--dump-signal)")
            self._wait_until(lambda: procs.leader_exited(pgid), cfg.dump_wait, pgid)
        self._stop_group(pgid)

    def _stop_group(self, pgid: int) -> None:
        self._kill(pgid, signal.SIGTERM, "")
        if not self._wait_until(lambda: self._all_gone(pgid), self.config.grace, pgid):
            self._kill(pgid, signal.SIGKILL, f"after {self.config.grace:g}s grace")
            self._wait_until(lambda: self._all_gone(pgid), _AFTER_KILL, pgid)

    def _finish(self, child: subprocess.Popen[bytes]) -> ChildExit:
        """The command's process has ended: stop what is left of its group, then reap it."""
        pgid = child.pid
        if not self._all_gone(pgid):
            left = len(procs.group_members(pgid)) + len(self._strays(pgid))
            self.log.emit(Event(EventKind.SIGNAL, f"pid {pgid} ended; stopping {left} leftover "
                                f"process{'es' if left != 1 else ''} of its tree", pid=pgid))
            self._stop_group(pgid)
        returncode = child.wait()
        self._child = None
        if self.adopt_orphans:
            procs.reap_adopted(exclude=None)
        return ChildExit(returncode)

    def _kill_leftovers(self) -> None:
        """Last resort on the way out (an error, or an interrupt inside the loop): SIGKILL all.

        No scan of /proc here beyond what is cheap: this runs when something already failed.
        """
        child = self._child
        if child is None:
            return
        procs.signal_group(child.pid, signal.SIGKILL)
        procs.signal_each(self._known, signal.SIGKILL)
        with contextlib.suppress(Exception):
            procs.signal_each(self._strays(child.pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=_AFTER_KILL)
        self._child = None
        if self.adopt_orphans:
            with contextlib.suppress(Exception):
                procs.reap_adopted(exclude=None)

    # -- helpers ---------------------------------------------------------------------------

    def _kill(self, pgid: int, sig: int, why: str) -> None:
        strays = self._strays(pgid)
        procs.signal_group(pgid, sig)
        procs.signal_each(strays, sig)
        name = signal.Signals(sig).name
        extra = ""
        if strays:
            extra = f" and {len(strays)} process{'es' if len(strays) != 1 else ''} outside it"
        self.log.emit(Event(EventKind.SIGNAL, f"sent {name} to process group {pgid}{extra}"
                            f"{' ' + why if why else ''}", pid=pgid, signal=name))

    def _strays(self, pgid: int) -> list[psutil.Process]:
        return procs.strays(pgid, self._known, adopted=self.adopt_orphans)

    def _all_gone(self, pgid: int) -> bool:
        return not procs.group_members(pgid) and not self._strays(pgid)

    def _handle_pending(self, pgid: int | None) -> bool:
        """Forward received signals to the group; True if any arrived."""
        arrived = False
        while self._pending:
            signum = self._pending.popleft()
            arrived = True
            if self._stop_signal is None:
                self._stop_signal = signum
            name = signal.Signals(signum).name
            if pgid is not None and procs.signal_group(pgid, signum):
                self.log.emit(Event(EventKind.FORWARD, f"received {name}; passed it on to process "
                                    f"group {pgid}", pid=pgid, signal=name))
            else:
                self.log.emit(Event(EventKind.FORWARD, f"received {name}; no command running",
                                    signal=name))
        return arrived

    def _wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``, waking early on any signal (through the wake-up fd)."""
        readable, _, _ = select.select([self._wake_r], [], [], max(timeout, 0.0))
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass

    def _wait_until(self, done: Callable[[], bool], timeout: float, pgid: int | None) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._handle_pending(pgid)
            if done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wait(min(_POLL, remaining))

    def _pause(self, delay: float) -> bool:
        """The backoff delay; True if a stop signal arrived meanwhile."""
        return self._wait_until(lambda: self._stop_signal is not None, delay, None)

    def _done_on_signal(self) -> int:
        assert self._stop_signal is not None
        status = 128 + self._stop_signal
        self.log.emit(Event(EventKind.DONE, f"stopped by {signal.Signals(self._stop_signal).name} "
                            f"while waiting to restart; exiting with status {status}",
                            status=status))
        return status

    def _warn_unknown_vram(self, reading: Reading) -> None:
        if self.config.max_vram is None or reading.vram is not None or self._vram_warned:
            return
        self._vram_warned = True
        self.log.emit(Event(EventKind.WARNING, "VRAM of the command is unknown (NVML gave no "
                            "per-process value); --max-vram cannot act until it does",
                            reading=reading))
