"""PyTorch Lightning: ``VramGuardCallback`` guards every training batch (and validation batch).

    from vramguard.lightning import VramGuardCallback

    trainer = lightning.Trainer(callbacks=[VramGuardCallback(on_leak="stop", report="leak.html")])

One Guard per rank (each process has its own callback) over training batches, one for validation;
``vramguard/allocated_bytes``, ``vramguard/growth_bytes_per_step`` and ``vramguard/leak`` go
to the trainer's loggers and ``trainer.callback_metrics`` at each verdict check: every
``check_every`` steps, further apart when steps are so short that a check would cost more than 0.5%
of the steps between two (:class:`~vramguard._training.CheckCadence`). On a leak, once the Guard's diagnosis
window has explained it: a :class:`~vramguard._training.LeakWarning` with the report ("warn"),
:class:`~vramguard.errors.LeakDetected` ("raise"), or ``trainer.should_stop`` ("stop"). With
``report=PATH`` the report (text, or HTML/JSON by the suffix) is written at the leak and at the
end of training, whatever the verdict. Needs ``pip install 'vramguard[lightning]'``.

Under a distributed run (``strategy="ddp"`` and the like: torch.distributed initialised with
more than one process) each rank's training Guard shares its summary
(:func:`vramguard.distributed.share`, woken at each check and at least every ``share_every``),
and rank 0 reads the rank table at each check off the step path, logs it through the
``vramguard`` logger (a warning when a rank is newly flagged) and logs
``vramguard/leaking_ranks`` (how many ranks are flagged). No collective is involved.
``share=False`` turns it off. ``on_leak="stop"`` stops every rank together: at each check the
ranks vote (one small all-reduce, only with "stop"), since one rank leaving alone would kill the
others at their next gradient all-reduce; the vote also agrees on the step of the next check.
"""

from __future__ import annotations

import os
from typing import Any

from vramguard._training import LeakWarning, TrainingWatch
from vramguard.distributed.training import SHARE_EVERY, stop_together

try:  # the unified package first; the standalone one has the same Callback API
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - depends on which Lightning is installed
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError as error:
        from vramguard.errors import EnvironmentProblem

        raise EnvironmentProblem("vramguard.lightning needs PyTorch Lightning",
                                 hint="pip install 'vramguard[lightning]'") from error

__all__ = ["LeakWarning", "VramGuardCallback"]


class VramGuardCallback(Callback):
    """Watch a Lightning run for memory leaks (see the module docstring).

    ``on_leak``: "warn" | "raise" | "stop". ``log_metrics``: hand the three metrics to the
    trainer's loggers and ``callback_metrics``. ``report``: a path for the report.
    ``check_every``: the fewest steps between verdicts.
    ``device``: the Guard's device (None: the module's). Other keyword arguments go to the
    :class:`~vramguard.Guard` (``warmup``, ``diagnose``, ``diagnose_steps``, ``overhead_budget``).
    ``share``: share the training Guard's summary under a distributed run, and log the rank table
    on rank 0 (see the module docstring); ``share_every``: the publishing interval between checks
    (``"30s"``, or seconds). ``self.train.sharing.latest``: rank 0's latest table.
    """

    def __init__(self, on_leak: str = "warn", log_metrics: bool = True,
                 report: str | os.PathLike[str] | None = None, *, check_every: int = 50,
                 device: str | None = None, share: bool = True,
                 share_every: str | float = SHARE_EVERY, **guard_options: Any) -> None:
        super().__init__()
        self.log_metrics = log_metrics
        self.train = TrainingWatch("training", on_leak=on_leak, report=report,
                                   check_every=check_every, device=device,
                                   guard_options=guard_options, share=share,
                                   share_every=share_every)
        self.validation = TrainingWatch("validation", on_leak=on_leak, check_every=check_every,
                                        device=device, guard_options=guard_options)
        self.report: Any = None  # the last report written or acted on

    # -- training -------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        """Start the step (and the Guard, on the module's device, on first use)."""
        if self.train.guard is None:
            self.train.target = _target(pl_module, trainer, "training")
            self.train.start(_device(pl_module))
        self.train.begin()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """End the step; every ``check_every`` steps: verdict, metrics, and the leak action."""
        if self.train.end():
            self._check(self.train, trainer, pl_module, "vramguard/")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Act on a leak not acted on yet; write the report whatever the verdict."""
        self.report = self.train.finish() or self.report

    # -- validation -----------------------------------------------------------------------------
    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        """Validation steps get a Guard of their own (sanity checks are not guarded)."""
        if trainer.sanity_checking:
            return
        if self.validation.guard is None:
            self.validation.target = _target(pl_module, trainer, "validation")
            self.validation.start(_device(pl_module))
        self.validation.begin()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """End the validation step; verdicts on the validation Guard's own schedule."""
        if self.validation.end():
            self._check(self.validation, trainer, pl_module, "vramguard/val_")

    # -- errors ---------------------------------------------------------------------------------
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Close an open step with the error (an OOM writes the Guard's post-mortem if asked)."""
        for watch in (self.train, self.validation):
            watch.end(exception)
        self.train.close(final_table=False)  # a last publish, no table read: the run is failing

    def _check(self, watch: TrainingWatch, trainer: Any, pl_module: Any, prefix: str) -> None:
        action = watch.check()
        if self.log_metrics:
            _hand_to_loggers(trainer, {**watch.metrics(prefix), **watch.rank_metrics(prefix)})
        if action is not None:
            self.report = watch.act(action)
        spacing = watch.spacing()
        if watch.on_leak == "stop":
            # One rank stopping alone kills the job at the others' next gradient all-reduce:
            # every rank votes at every check, and agrees on the next check's step. Why this
            # collective is safe: distributed.training.stop_together.
            stop, spacing = stop_together(action == "stop", spacing,
                                          getattr(trainer.strategy, "root_device", None),
                                          urgent=watch.urgent)
            if stop:
                trainer.should_stop = True
        watch.checked(spacing)


def _hand_to_loggers(trainer: Any, metrics: dict[str, float]) -> None:
    """Hand ``metrics`` to the trainer's loggers and its ``callback_metrics``, as
    ``pl_module.log(on_step=True)`` would, without entering them in the run's result collection:
    Lightning then reduces every logged key at every later step, which cost 5% of a 1 ms-step
    run for three keys logged every 50 steps (``bench/callback_overhead.py``; an empty callback
    costs 1%). The loggers write on rank 0 only (theirs is ``rank_zero_only``), so no rank waits
    on another's keys (divergent keys across ranks hang a synced log, Lightning#19106)."""
    import torch

    step = trainer.global_step
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
    # The same dict ``callback_metrics`` returns at every call: callbacks such as EarlyStopping
    # (monitor="vramguard/leak") read tensors from it.
    trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})


def _device(pl_module: Any) -> str:
    device = getattr(pl_module, "device", None)
    return "auto" if device is None else str(device)


def _target(pl_module: Any, trainer: Any, phase: str) -> str:
    rank = getattr(trainer, "global_rank", 0)
    suffix = f", rank {rank}" if getattr(trainer, "world_size", 1) > 1 else ""
    return f"{type(pl_module).__name__} {phase}{suffix}"
