"""Hugging Face Trainer: ``VramGuardCallback``, a ``transformers.TrainerCallback`` that guards steps.

    from vramguard.transformers import VramGuardCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[VramGuardCallback(on_leak="stop", report="leak.html")])

The same options and behaviour as :mod:`vramguard.lightning`: each optimizer step
(``on_step_begin``/``on_step_end``) is a Guard step; every ``check_every`` steps a verdict (further
apart at sub-millisecond steps: see :class:`~vramguard._training.CheckCadence`); the metrics
join the Trainer's logs in ``on_log`` (so every ``report_to`` integration gets them); on an
explained leak a warning ("warn"), :class:`~vramguard.errors.LeakDetected` ("raise") or
``control.should_training_stop`` ("stop"); the report (text, HTML or JSON by suffix) at the leak
and at the end of training. Needs ``pip install 'vramguard[transformers]'``.

Under a distributed run (torchrun, accelerate: torch.distributed initialised with more than one
process) each rank's Guard shares its summary (:func:`vramguard.distributed.share`, woken at
each check and at least every ``share_every``); rank 0 reads the rank table at each check off
the step path, logs it through the ``vramguard`` logger and adds ``vramguard/leaking_ranks`` to
its logs. No collective is involved. ``share=False`` turns it off. ``on_leak="stop"`` stops
every rank together (a vote at each check, see :func:`~vramguard.distributed.training.stop_together`).
"""

from __future__ import annotations

import os
from typing import Any

from vramguard._training import LeakWarning, TrainingWatch
from vramguard.distributed.training import SHARE_EVERY, stop_together

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised only without transformers
    from vramguard.errors import EnvironmentProblem

    raise EnvironmentProblem("vramguard.transformers needs Hugging Face transformers",
                             hint="pip install 'vramguard[transformers]'") from error

__all__ = ["LeakWarning", "VramGuardCallback"]


class VramGuardCallback(TrainerCallback):
    """Watch a Hugging Face Trainer run for memory leaks (see the module docstring).

    ``on_leak``: "warn" | "raise" | "stop". ``log_metrics``: add ``vramguard/*`` to the logs.
    ``report``: a path for the report. ``check_every``: the fewest steps between verdicts. ``device``: the
    Guard's device (None: the model's). ``share``/``share_every``: as in
    :class:`vramguard.lightning.VramGuardCallback`; ``self.watch.sharing.latest`` is rank 0's
    latest table. Other keyword arguments go to the :class:`~vramguard.Guard`.
    """

    def __init__(self, on_leak: str = "warn", log_metrics: bool = True,
                 report: str | os.PathLike[str] | None = None, *, check_every: int = 50,
                 device: str | None = None, share: bool = True,
                 share_every: str | float = SHARE_EVERY, **guard_options: Any) -> None:
        self.log_metrics = log_metrics
        self.watch = TrainingWatch("training", on_leak=on_leak, report=report,
                                   check_every=check_every, device=device,
                                   guard_options=guard_options, share=share,
                                   share_every=share_every)
        self.report: Any = None  # the last report written or acted on

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the step (and the Guard, on the model's device, on first use)."""
        if self.watch.guard is None:
            model = kwargs.get("model")
            self.watch.target = f"{type(model).__name__} training" if model is not None \
                else "training"
            if getattr(state, "is_world_process_zero", True) is False or \
                    getattr(args, "world_size", 1) > 1:
                self.watch.target += f", rank {getattr(args, 'process_index', 0)}"
            self.watch.start(str(getattr(model, "device", None) or "auto"))
        self.watch.begin()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """End the step; every ``check_every`` steps the verdict, and the leak action."""
        if self.watch.end():
            action = self.watch.check()
            if action is not None:
                self.report = self.watch.act(action)
            spacing = self.watch.spacing()
            if self.watch.on_leak == "stop":
                stop, spacing = stop_together(action == "stop", spacing,
                                              getattr(args, "device", None),
                                              urgent=self.watch.urgent)
                if stop:
                    control.should_training_stop = True
            self.watch.checked(spacing)
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Add the latest ``vramguard/*`` metrics to the Trainer's logs."""
        if self.log_metrics and logs is not None and self.watch.guard is not None:
            logs.update(self.watch.metrics())
            logs.update(self.watch.rank_metrics())  # rank 0's table; nothing on other ranks

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Act on a leak not acted on yet; write the report whatever the verdict."""
        self.report = self.watch.finish() or self.report
