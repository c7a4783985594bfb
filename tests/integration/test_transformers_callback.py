"""``vramguard.transformers.VramGuardCallback`` in a real Hugging Face Trainer run (a tiny GPT-2
built from a config, no downloads, CPU): keeping every step's loss is reported with site, root
and fix and stops training; the fixed trainer (``loss.item()``) is ``no_leak``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from vramguard.transformers import VramGuardCallback  # noqa: E402

# Read after every step, for a decision at a step that does not depend on the machine's load
# (see test_lightning_callback).
GUARD = {"overhead_budget": None, "warmup": 5, "diagnose_steps": 10}


class KeepingTrainer(transformers.Trainer):
    """A Trainer that keeps each step's loss: the tensor (the leak) or the number (the fix)."""

    def __init__(self, *args: object, leak: bool, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.leak = leak
        self.loss_history: list[object] = []

    def compute_loss(self, model: object, inputs: object, return_outputs: bool = False,
                     **kwargs: object) -> object:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        self.loss_history.append(loss if self.leak else loss.item())
        return (loss, outputs) if return_outputs else loss


class Recorder(transformers.TrainerCallback):
    """Stands in for a ``report_to`` integration: what the logs carried after vramguard's on_log."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: object, state: object, control: object, logs: dict[str, float] | None
               = None, **kwargs: object) -> None:
        self.logs.append(dict(logs or {}))


def train(tmp_path: Path, *, leak: bool, callback: VramGuardCallback,
          steps: int) -> tuple[KeepingTrainer, Recorder]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    data = [{"input_ids": (ids := torch.randint(0, 64, (8,))), "labels": ids}
            for _ in range(4 * steps)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
        logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    recorder = Recorder()
    trainer = KeepingTrainer(model=model, args=args, train_dataset=data,
                             callbacks=[callback, recorder], leak=leak)
    trainer.train()
    return trainer, recorder


def test_a_kept_loss_stops_training_with_the_explained_report(tmp_path: Path) -> None:
    report = tmp_path / "leak.html"
    callback = VramGuardCallback(on_leak="stop", report=report, check_every=10, **GUARD)
    trainer, recorder = train(tmp_path, leak=True, callback=callback, steps=150)
    assert trainer.state.global_step < 150            # should_training_stop at the leak
    assert callback.report.is_leak
    suspect = callback.report.suspects[0]
    assert suspect.allocated_at is not None
    assert suspect.allocated_at.function == "compute_loss"
    assert suspect.allocated_at.file == __file__
    assert suspect.held_by is not None
    assert ".loss_history" in suspect.held_by
    assert suspect.fix is not None
    assert ".detach()" in suspect.fix or ".item()" in suspect.fix
    assert str(callback.report).startswith("LEAK GPT2LMHeadModel training on cpu after ")
    assert "GPT2LMHeadModel training" in report.read_text()
    assert recorder.logs[-1]["vramguard/leak"] == 1.0  # the metrics reached the other loggers
    assert recorder.logs[-1]["vramguard/growth_bytes_per_step"] > 0


def test_the_fixed_trainer_is_no_leak(tmp_path: Path) -> None:
    callback = VramGuardCallback(on_leak="raise", check_every=10, **GUARD)
    trainer, recorder = train(tmp_path, leak=False, callback=callback, steps=60)
    assert trainer.state.global_step == 60
    assert not callback.report.is_leak
    assert str(callback.report).startswith("NO_LEAK GPT2LMHeadModel training on cpu after 60 steps")
    assert recorder.logs[-1]["vramguard/leak"] == 0.0
