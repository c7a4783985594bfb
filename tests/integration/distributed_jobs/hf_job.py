"""An HF Trainer run under torchrun on CPU (gloo, ``ddp_backend="gloo"``) under VramGuardCallback.

A tiny GPT-2 built from a config (no downloads). ``--leak-rank`` keeps every step's logits with
their graph; the other rank keeps the loss as a number (the fix). The callback shares on its own.
Each rank writes its ``vramguard`` log records to ``--out``/rank{N}.log and what its callback
ended with (verdict, sharing state, the Trainer's logs; on rank 0 the last rank table) to
``--out``/rank{N}.json. ``--guard KEY=VALUE`` sets a Guard option, ``--on-leak`` the action.
"""

from __future__ import annotations

import json
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import torch
import transformers
from _common import guard_options, job_arguments, log_records_to  # the sibling module

from vramguard.transformers import VramGuardCallback


class KeepingTrainer(transformers.Trainer):
    """Keeps each step's logits (the leak) or the loss as a number (the fix)."""

    def __init__(self, *args: object, leak: bool, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.leak = leak
        self.history: list[object] = []

    def compute_loss(self, model: object, inputs: object, return_outputs: bool = False,
                     **kwargs: object) -> object:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,  # type: ignore[arg-type]
                                             **kwargs)
        self.history.append(outputs.logits if self.leak else loss.item())
        return (loss, outputs) if return_outputs else loss


class Recorder(transformers.TrainerCallback):
    """What the Trainer's logs carried after vramguard's on_log (a ``report_to`` stand-in)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: object, state: object, control: object,
               logs: dict[str, float] | None = None, **kwargs: object) -> None:
        self.logs.append(dict(logs or {}))


def main() -> None:
    args = job_arguments(share_option=False)
    guard = guard_options(args.guard)

    rank = int(os.environ["RANK"])
    records = log_records_to(args.out, rank)
    warnings.simplefilter("ignore")  # the frameworks' advice on a tiny CPU run

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    data = [{"input_ids": (ids := torch.randint(0, 64, (8,))), "labels": ids}
            for _ in range(2 * 4 * args.steps)]
    training = transformers.TrainingArguments(
        output_dir=str(args.out / "trainer"), max_steps=args.steps, per_device_train_batch_size=4,
        logging_steps=args.check_every, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, ddp_backend="gloo", dataloader_num_workers=0)
    callback = VramGuardCallback(args.on_leak, check_every=args.check_every, **guard)
    recorder = Recorder()
    trainer = KeepingTrainer(model=model, args=training, train_dataset=data,
                             callbacks=[callback, recorder], leak=rank == args.leak_rank)
    trainer.train()

    watch = callback.watch
    sharing = watch.sharing
    mine = {"rank": rank, "verdict": None if watch.verdict is None else str(watch.verdict.kind),
            "steps": watch.guard.requests, "shared": sharing is not None,
            "sharer_running": sharing is not None and sharing.sharer.running,
            "logs": recorder.logs,
            "reason": None if watch.verdict is None else watch.verdict.reason,
            "series": [(s.request, s.allocated) for s in watch.guard.samples]}
    if sharing is not None and sharing.latest is not None:
        mine["table"] = sharing.latest.to_dict()
        mine["reads"], mine["skipped"] = sharing.reads, sharing.skipped
    (args.out / f"rank{rank}.json").write_text(json.dumps(mine))
    records.close()


if __name__ == "__main__":
    main()
