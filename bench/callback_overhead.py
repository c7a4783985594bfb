"""Training-callback overhead: a clean run with ``VramGuardCallback`` (default settings) against
the same run without it, side by side.

Lightning: a small MLP on random data, CPU, ``--steps`` optimizer steps per run, ``--rounds``
runs of each, alternating so machine noise hits both; the time is taken from ``on_train_start``
to ``on_train_end`` (the Trainer's set-up is the same for both and excluded). HF Trainer
(``--framework transformers``): a tiny GPT-2 from a config, timed the same way. Steps here take a
few ms, far less than real training steps, so the ratio is an upper bound.

Run: python bench/callback_overhead.py [--framework lightning|transformers] [--steps 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch

warnings.filterwarnings("ignore")  # the frameworks' own advice on tiny CPU runs
os.environ.setdefault("HF_HUB_OFFLINE", "1")


HOOK_SECONDS: list[float] = []  # time spent inside the callback's hooks, per guarded run
CHECKS: list[int] = []          # verdict checks the callback made, per guarded run


def timed(callback: object, names: tuple[str, ...]) -> object:
    """Wrap the callback's hooks so the run also reports the time spent inside them (robust to
    a busy machine, where the with/without wall-clock ratio is noise-dominated)."""
    spent = [0.0]
    for name in names:
        hook = getattr(callback, name)

        def wrapper(*args: object, _hook: Callable[..., object] = hook, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return _hook(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started
        setattr(callback, name, wrapper)
    HOOK_SECONDS.append(0.0)
    index = len(HOOK_SECONDS) - 1
    callback._spent = (spent, index)  # type: ignore[attr-defined]
    return callback


def _collect(callback: object) -> None:
    spent, index = callback._spent  # type: ignore[attr-defined]
    HOOK_SECONDS[index] = spent[0]


def lightning_run(steps: int, guarded: bool) -> float:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from vramguard.lightning import VramGuardCallback

    class Timer(L.Callback):
        def on_train_start(self, trainer: object, module: object) -> None:
            self.started = time.perf_counter()

        def on_train_end(self, trainer: object, module: object) -> None:
            self.elapsed = time.perf_counter() - self.started

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                           torch.nn.Linear(512, 1))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
            features, target = batch
            return torch.nn.functional.mse_loss(self.net(features), target)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(32 * steps, 256), torch.randn(32 * steps, 1)),
                      batch_size=32)
    timer = Timer()
    guard = timed(VramGuardCallback(), ("on_train_batch_start", "on_train_batch_end",
                                        "on_train_end")) if guarded else None
    callbacks: list[object] = [timer] + ([guard] if guard is not None else [])
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    trainer.fit(MLP(), data)
    if guard is not None:
        _collect(guard)
        CHECKS.append(guard.train.checks)  # type: ignore[attr-defined]
    return timer.elapsed


def transformers_run(steps: int, guarded: bool) -> float:
    import tempfile

    import transformers

    from vramguard.transformers import VramGuardCallback

    class Timer(transformers.TrainerCallback):
        def on_train_begin(self, *args: object, **kwargs: object) -> None:
            self.started = time.perf_counter()

        def on_train_end(self, *args: object, **kwargs: object) -> None:
            self.elapsed = time.perf_counter() - self.started

    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=256,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    data = [{"input_ids": (ids := torch.randint(0, 256, (32,))), "labels": ids}
            for _ in range(8 * steps)]
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=8, logging_steps=50,
            report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
        guard = timed(VramGuardCallback(), ("on_step_begin", "on_step_end", "on_log",
                                            "on_train_end")) if guarded else None
        callbacks = [timer] + ([guard] if guard is not None else [])
        transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                             train_dataset=data, callbacks=callbacks).train()
    if guard is not None:
        _collect(guard)
        CHECKS.append(guard.watch.checks)  # type: ignore[attr-defined]
    return timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["lightning", "transformers"], default="lightning")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run: Callable[[int, bool], float] = (lightning_run if args.framework == "lightning"
                                         else transformers_run)
    run(20, True)  # imports and first-call costs out of the timed runs
    HOOK_SECONDS.clear()
    CHECKS.clear()
    bare: list[float] = []
    guarded: list[float] = []
    for _ in range(args.rounds):
        bare.append(run(args.steps, False))
        guarded.append(run(args.steps, True))
    step_ms = statistics.median(bare) / args.steps * 1e3
    print(f"{args.framework}: {args.steps} steps x {args.rounds} rounds, {step_ms:.2f} ms/step bare")
    print(f"median run: {statistics.median(bare):.3f} s bare, {statistics.median(guarded):.3f} s "
          f"with VramGuardCallback")
    ratios = [g / b for g, b in zip(guarded, bare, strict=True)]
    print(f"wall-clock ratio with/without = {statistics.median(guarded) / statistics.median(bare):.4f}"
          f" (median of paired ratios {statistics.median(ratios):.4f}, target <= 1.05)")
    shares = [h / g for h, g in zip(HOOK_SECONDS, guarded, strict=True)]
    print(f"time inside the callback's hooks: median {statistics.median(shares) * 100:.2f}% of the "
          f"guarded run ({statistics.median(HOOK_SECONDS) * 1e3:.0f} ms per run); verdict checks per "
          f"run: {CHECKS}")


if __name__ == "__main__":
    main()
