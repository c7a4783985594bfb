"""The core the training callbacks share: one Guard per phase, periodic verdicts, the leak action.

:mod:`vramguard.lightning` and :mod:`vramguard.transformers` only map their framework's hooks onto
:class:`TrainingWatch`: ``begin()``/``end()`` around each step, ``metrics()`` for the logger,
``action()`` once a leak is explained. Nothing here imports a training framework.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from vramguard.distributed.training import SHARE_EVERY
from vramguard.errors import LeakDetected

_log = logging.getLogger("vramguard")
OnLeak = Literal["warn", "raise", "stop"]
ON_LEAK: tuple[OnLeak, ...] = ("warn", "raise", "stop")


class LeakWarning(UserWarning):
    """Issued once per run by a training callback with ``on_leak="warn"``; the text is the report."""


class TrainingWatch:
    """Guards one phase's steps (training, or validation) and decides when to act on a leak.

    ``check_every``: steps between verdicts (a verdict costs milliseconds at most, so every 50
    steps is far inside the overhead budget). After the first leak verdict the Guard tracks sites
    for its diagnosis window (``diagnose_steps``); the action waits for that, so the warning, the
    exception or the stop carries the explained report. ``guard_options`` go to the Guard.

    ``share``: under a distributed run (torch.distributed initialised, more than one process),
    publish this rank's summary and, on rank 0, read and log the rank table at each check
    (:mod:`vramguard.distributed.training`); ``share_every``: the publishing interval between
    checks. ``sharing`` is that :class:`~vramguard.distributed.training.RankSharing` (None when
    not sharing).
    """

    def __init__(self, target: str, *, on_leak: str = "warn", report: str | os.PathLike[str] | None
                 = None, check_every: int = 50, device: str | None = None,
                 guard_options: dict[str, Any] | None = None, share: bool = False,
                 share_every: str | float = SHARE_EVERY) -> None:
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
        self._step = self.guard.step()
        self._step.__enter__()

    def end(self, error: BaseException | None = None) -> bool:
        """A step ended; True when a verdict is due (every ``check_every`` steps)."""
        step, self._step = self._step, None
        if step is None:
            return False
        step.__exit__(None if error is None else type(error), error, None)
        return self.guard.requests % self.check_every == 0

    def check(self) -> str | None:
        """Recompute the verdict; the action due now ("warn", "raise", "stop") or None. The
        action is due once, when a leak has been seen and its diagnosis window has run."""
        from vramguard.guard_diagnosis import explained

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
        report = self.guard.report(self.target)
        self.write(report)
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
