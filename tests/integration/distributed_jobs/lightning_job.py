"""A Lightning DDP run on CPU (``strategy="ddp"``, 2 processes, gloo) under VramGuardCallback.

Lightning's own launcher starts rank 1 by running this script again. ``--leak-rank`` keeps
every step's output with its graph (``self.history.append(out)``: 64x64 float32, 16 KiB a
step); the other rank keeps the loss as a number (``loss.item()``), the fix. The callback
shares on its own (nothing here calls ``vramguard.distributed``). Each rank writes the
``vramguard`` log records it emitted to ``--out``/rank{N}.log and what its callback ended with
(verdict, sharing state, metrics, the steps it checked at; on rank 0 the last rank table) to
``--out``/rank{N}.json.
``--guard KEY=VALUE`` sets a Guard option (the callback's defaults otherwise); ``--no-share``
passes ``share=False``, ``--on-leak`` the action.
"""

from __future__ import annotations

import json
import os
import warnings

import lightning as L
import torch
from _common import guard_options, job_arguments, log_records_to  # the sibling module
from torch.utils.data import DataLoader, TensorDataset

from vramguard.lightning import VramGuardCallback


class Regressor(L.LightningModule):
    def __init__(self, *, leak: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 64)
        self.leak = leak
        self.history: list[object] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> object:
        features, target = batch
        out = self.layer(features)
        loss = torch.nn.functional.mse_loss(out, target)
        self.history.append(out if self.leak else loss.item())
        return loss

    def configure_optimizers(self) -> object:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Checks(L.Callback):
    """Records the steps at which the vramguard callback (registered before it) checked."""

    def __init__(self, callback: VramGuardCallback) -> None:
        self.callback, self.at, self.kinds = callback, [], []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        train = self.callback.train
        if train.checks > len(self.at):
            self.at.append(train.steps)
            self.kinds.append(train.verdict.kind.value)


def main() -> None:
    args = job_arguments(share_option=True)
    guard = guard_options(args.guard)

    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning's launcher for rank 1
    records = log_records_to(args.out, rank)
    warnings.simplefilter("ignore")  # Lightning's tiny-run advice; the leak warning is logged too

    torch.manual_seed(rank)
    steps = args.steps
    data = DataLoader(TensorDataset(torch.randn(128 * steps, 64), torch.randn(128 * steps, 64)),
                      batch_size=64)
    callback = VramGuardCallback(args.on_leak, check_every=args.check_every,
                                 share=not args.no_share, **guard)
    checks = Checks(callback)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback, checks])
    trainer.fit(Regressor(leak=trainer.global_rank == args.leak_rank), data)

    sharing = callback.train.sharing
    verdict = callback.train.verdict
    mine = {"rank": trainer.global_rank, "verdict": None if verdict is None else str(verdict.kind),
            "steps": callback.train.guard.requests, "shared": sharing is not None,
            "sharer_running": sharing is not None and sharing.sharer.running,
            "series": [(s.request, s.allocated) for s in callback.train.guard.samples],
            "reason": None if verdict is None else verdict.reason, "checked_at": checks.at,
            "check_verdicts": checks.kinds,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
    if sharing is not None and sharing.latest is not None:
        mine["table"] = sharing.latest.to_dict()
        mine["text"] = str(sharing.latest)
        mine["reads"], mine["skipped"] = sharing.reads, sharing.skipped
    (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(mine))
    records.close()


if __name__ == "__main__":
    main()
