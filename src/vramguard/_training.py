"""The core the training callbacks share: one Guard per phase, periodic verdicts, the leak action.

:mod:`vramguard.lightning` and :mod:`vramguard.transformers` only map their framework's hooks onto
:class:`TrainingWatch`: ``begin()``/``end()`` around each step, ``metrics()`` for the logger,
``action()`` once a leak is explained. Nothing here imports a training framework.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vramguard.distributed.training import SHARE_EVERY
from vramguard.errors import LeakDetected

_log = logging.getLogger("vramguard")
OnLeak = Literal["warn", "raise", "stop"]
ON_LEAK: tuple[OnLeak, ...] = ("warn", "raise", "stop")


CHECK_SHARE = 0.005
"""A verdict check (the verdict, the metrics, the rank vote) may cost this share of the steps'
time between checks. At a 0.95 ms step a check (~2-3 ms: ``decide()`` over a few hundred
samples, the logging) every 50 steps was 4.5% of a Lightning run (``bench/callback_overhead.py``);
at steps of 10 ms and more the spacing stays ``check_every``. Half the Guard's default budget:
the callback's whole cost (hooks, reads, checks) has to stay under 5% even at 1 ms steps."""
MAX_SPACING = 100
"""Checks come at most this many ``check_every`` apart, however dear a check is against the
steps: a verdict still comes every 5,000 steps at the default spacing (a check over the full
512-sample history costs up to ~10 ms: at 1 ms steps still within the share)."""


class LeakWarning(UserWarning):
    """Issued once per run by a training callback with ``on_leak="warn"``; the text is the report."""


@dataclass(slots=True)
class CheckCadence:
    """When the next verdict check is due (pure: the caller measures and tells it).

    ``every``: the fewest steps between checks. ``share``: what a check may cost against the
    steps between two (None: every ``every`` steps, whatever a check costs, as in dense mode).
    ``due``: the step at which the next check comes.
    """

    every: int
    share: float | None = CHECK_SHARE
    due: int = 0

    def __post_init__(self) -> None:
        self.due = self.due or self.every

    def spacing(self, step_s: float, cost_s: float) -> int:
        """Steps to the next check this process would choose, after a check that cost
        ``cost_s`` with steps of ``step_s`` seconds. The check just made is the estimate: a
        check's cost grows with the samples (``decide()`` is O(n^2): 0.3 ms at 20 samples, 4 ms
        at 130), so a running average would lag and check too often. Under a stop vote the
        ranks agree on the largest (each rank's checks cost differently)."""
        if self.share is None or cost_s <= 0.0 or step_s <= 0.0:
            return self.every
        wanted = math.ceil(round(cost_s / (self.share * step_s), 6))  # 400.0000001 is 400
        return min(max(self.every, wanted), self.every * MAX_SPACING)

    def checked(self, step: int, spacing: int) -> None:
        """The check at ``step`` is over; the next comes ``spacing`` steps later."""
        self.due = step + max(1, spacing)


class TrainingWatch:
    """Guards one phase's steps (training, or validation) and decides when to act on a leak.

    ``check_every``: steps between verdicts (a verdict costs milliseconds at most, so every 50
    steps is far inside the overhead budget). After the first leak verdict the Guard tracks sites
    for its diagnosis window (``diagnose_steps``); the action waits for that, so the warning, the
    exception or the stop carries the explained report. ``guard_options`` go to the Guard.

    The checks are spaced by :class:`CheckCadence`: every ``check_every`` steps, or further
    apart when a check would cost more than 0.5% of the steps between two (sub-millisecond
    steps); with the Guard in dense mode (``overhead_budget=None``) exactly every
    ``check_every``. The callback measures each check between :meth:`check` and
    :meth:`checked`; ``checks`` counts them. ``clock``/``own_clock``: the wall clock that times
    the steps and the CPU clock that times a check (a check preempted on a busy machine took
    nothing from training), injectable for tests.

    ``share``: under a distributed run (torch.distributed initialised, more than one process),
    publish this rank's summary and, on rank 0, read and log the rank table at each check
    (:mod:`vramguard.distributed.training`); ``share_every``: the publishing interval between
    checks. ``sharing`` is that :class:`~vramguard.distributed.training.RankSharing` (None when
    not sharing).
    """

    def __init__(self, target: str, *, on_leak: str = "warn", report: str | os.PathLike[str] | None
                 = None, check_every: int = 50, device: str | None = None,
                 guard_options: dict[str, Any] | None = None, share: bool = False,
                 share_every: str | float = SHARE_EVERY,
                 clock: Callable[[], float] = time.perf_counter,
                 own_clock: Callable[[], float] = time.thread_time) -> None:
        if on_leak not in ON_LEAK:
            raise ValueError(f"on_leak must be 'warn', 'raise' or 'stop', got {on_leak!r}")
        if check_every < 1:
            raise ValueError(f"check_every must be a positive number of steps, got {check_every!r}")
        if report is not None and not Path(report).resolve().parent.is_dir():
            raise ValueError(f"report must be a file in an existing directory, got {str(report)!r}")
        self.target = target
        self.on_leak = on_leak
        self.report_path = None if report is None else Path(report)
        self.check_every = check_every
        dense = (guard_options or {}).get("overhead_budget", CHECK_SHARE) is None
        self.cadence = CheckCadence(check_every, share=None if dense else CHECK_SHARE)
        self.checks = 0
        self.steps = 0  # steps ended (the Guard's own count, kept where the hot path reads it)
        self._clock = clock
        self._own_clock = own_clock
        self._since: tuple[int, float] | None = None  # (step, clock) where step time is timed from
        self._check_began = 0.0
        self._acting_s = 0.0  # of the check now running: the leak action's (a one-off report)
        self._step_s = 0.0  # the steps' mean wall time between the last two checks
        if share:
            from vramguard.distributed.publish import seconds

            seconds(share_every, name="share_every")  # a bad value fails here, not mid-run
        self._share = share
        self._share_every = share_every
        self.sharing: Any = None
        self._device = device
        self._options = dict(guard_options or {})
        self.guard: Any = None
        self._step: Any = None
        self.leak_seen = False
        self.acted = False
        self.verdict: Any = None

    def start(self, device: str) -> None:
        """Make the Guard on first use, on the device the model lives on."""
        if self.guard is None:
            from vramguard.guard import Guard

            self._options.setdefault("unit", "step")
            self.guard = Guard(self._device or device, **self._options)
            if self._share:  # the frameworks initialise torch.distributed before the 1st step
                from vramguard.distributed.training import RankSharing

                self.sharing = RankSharing.start(self.guard, every=self._share_every)

    def begin(self) -> None:
        """A step starts (hot path: the Guard's own step cost)."""
        if self._since is None:
            self._since = (0, self._clock())
        self._step = self.guard.step()
        self._step.__enter__()

    def end(self, error: BaseException | None = None) -> bool:
        """A step ended; True when a verdict check is due (see :class:`CheckCadence`)."""
        step, self._step = self._step, None
        if step is None:
            return False
        step.__exit__(None if error is None else type(error), error, None)
        self.steps += 1  # counted here: guard.requests is dearer, and this is every step
        return self.steps >= self.cadence.due

    def check(self) -> str | None:
        """Recompute the verdict; the action due now ("warn", "raise", "stop") or None. The
        action is due once, when a leak has been seen and its diagnosis window has run. The
        callback ends the check with :meth:`checked` once it has logged (and voted)."""
        from vramguard.guard_diagnosis import explained

        self._check_began = self._own_clock()
        self._acting_s = 0.0
        self.checks += 1
        step, began = self._since or (0, self._clock())
        steps = self.steps - step
        self._step_s = (self._clock() - began) / steps if steps > 0 else 0.0
        self.verdict = self.guard.verdict()
        if self.sharing is not None:
            self.sharing.check()
        if self.verdict.is_leak:
            self.leak_seen = True
        # The verdict must still say leak when the action comes: a report that stops a run
        # should not read "no_leak" (the diagnosis window's own steps can blur a small leak).
        if self.leak_seen and not self.acted and self.verdict.is_leak and explained(self.guard):
            self.acted = True
            return self.on_leak
        return None

    @property
    def urgent(self) -> bool:
        """A leak was seen and not acted on yet: the action waits for a check (the one after
        the diagnosis window), so checks come every ``check_every`` steps until then."""
        return self.leak_seen and not self.acted

    def spacing(self) -> int:
        """Steps to the next check this process would choose (the rank vote's proposal),
        from the steps' mean wall time since the last check; ``check_every`` while
        :attr:`urgent` (the check that opened the diagnosis window cost a census, and would
        otherwise have put the action thousands of steps off)."""
        if self.urgent:
            return self.cadence.every
        cost = self._own_clock() - self._check_began - self._acting_s
        return self.cadence.spacing(self._step_s, cost)

    def checked(self, spacing: int | None = None) -> None:
        """The check is over (logged, voted): schedule the next, ``spacing`` steps on (None:
        this process's own choice; under a stop vote, the spacing the ranks agreed on)."""
        step = self.steps
        spacing = self.spacing() if spacing is None else spacing
        self.cadence.checked(step, spacing)
        self._since = (step, self._clock())  # the steps' time, not the check's, from here

    def metrics(self, prefix: str = "vramguard/") -> dict[str, float]:
        """Allocated bytes, growth per step and the leak flag (0/1) for the framework's logger."""
        samples = self.guard.samples if self.guard is not None else ()
        allocated = next((s.allocated for s in reversed(samples) if s.allocated is not None), None)
        verdict = self.verdict
        growth = verdict.growth.bytes_per_request if verdict is not None and verdict.growth else 0.0
        values = {"growth_bytes_per_step": float(growth),
                  "leak": 1.0 if verdict is not None and verdict.is_leak else 0.0}
        if allocated is not None:
            values["allocated_bytes"] = float(allocated)
        return {f"{prefix}{name}": value for name, value in values.items()}

    def rank_metrics(self, prefix: str = "vramguard/") -> dict[str, float]:
        """``leaking_ranks`` from rank 0's latest rank table; empty elsewhere and unshared."""
        return {} if self.sharing is None else self.sharing.metrics(prefix)

    def act(self, action: str) -> Any:
        """Carry out ``action`` for the leak: write the report (when asked), warn or raise.
        ``stop`` is left to the caller (its framework's flag); the report is returned."""
        began = self._own_clock()
        try:
            report = self.guard.report(self.target)
            self.write(report)
        finally:  # once per run, not what a check costs: it must not space out the next ones
            self._acting_s += self._own_clock() - began
        if action == "warn":
            warnings.warn(LeakWarning(f"vramguard: {report.headline} in {self.target}\n{report}"),
                          stacklevel=2)
        elif action == "raise":
            raise LeakDetected(f"vramguard: {report.headline} in {self.target}\n{report}",
                               report=report)
        return report

    def finish(self) -> Any:
        """Training ended: act on a leak not acted on yet (even if its window could not finish),
        and write the report whatever the verdict; the report, or None without any step."""
        if self.guard is None or self.guard.requests == 0:
            return None
        action = self.check()
        self.close()
        if action is None and self.leak_seen and not self.acted:
            self.acted = True
            action = self.on_leak
        if action is not None:
            return self.act("warn" if action == "stop" else action)  # nothing left to stop
        report = self.guard.report(self.target)
        self.write(report)
        return report

    def close(self, *, final_table: bool = True) -> None:
        """Stop sharing (a last publish; rank 0 logs the table once more unless not
        ``final_table``). Idempotent."""
        if self.sharing is not None:
            self.sharing.close(final_table=final_table)

    def write(self, report: Any) -> None:
        """Write ``report`` to the ``report=`` path (text, ``.html`` or ``.json``); never raises."""
        if self.report_path is None:
            return
        try:
            report.write(self.report_path)
        except OSError:
            _log.warning("vramguard: could not write the report to %s", self.report_path,
                         exc_info=True)
