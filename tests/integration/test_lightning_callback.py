"""``vramguard.lightning.VramGuardCallback`` in a real Lightning run (tiny module, random data,
CPU): the classic ``self.loss_history.append(loss)`` leak is reported with site, root and fix;
the fixed module (``loss.item()``) is ``no_leak``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from vramguard.errors import LeakDetected  # noqa: E402
from vramguard.lightning import LeakWarning, VramGuardCallback  # noqa: E402

# Lightning's own warnings on this torch and on a tiny CPU run (not vramguard's).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
]

# Read after every step (overhead_budget=None): a budgeted Guard's cadence follows measured step
# and read times, so on a loaded machine the step at which it decides would vary. At defaults the
# leaking module below reached `leak` after 150 steps (a 300-step run, by hand).
GUARD = {"overhead_budget": None, "warmup": 5, "diagnose_steps": 10}


class Regressor(L.LightningModule):
    def __init__(self, *, leak: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 1)
        self.leak = leak
        self.loss_history: list[object] = []

    def training_step(self, batch: tuple[object, object], batch_idx: int) -> object:
        features, target = batch
        loss = torch.nn.functional.mse_loss(self.layer(features), target)
        if self.leak:
            self.loss_history.append(loss)          # keeps every step's graph alive
        else:
            self.loss_history.append(loss.item())   # the fix: a plain number
        return loss

    def configure_optimizers(self) -> object:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(module: Regressor, callback: VramGuardCallback, steps: int) -> object:
    data = DataLoader(TensorDataset(torch.randn(4 * steps, 16), torch.randn(4 * steps, 1)),
                      batch_size=4)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, data)
    return trainer


def test_a_leaking_run_stops_with_the_explained_report(tmp_path: Path) -> None:
    module = Regressor(leak=True)
    path = tmp_path / "leak.json"
    callback = VramGuardCallback(on_leak="stop", report=path, check_every=10, **GUARD)
    trainer = fit(module, callback, steps=150)
    assert trainer.should_stop
    assert trainer.global_step < 150                  # stopped at the leak, not at max_steps
    assert trainer.callback_metrics["vramguard/leak"] == 1.0
    assert trainer.callback_metrics["vramguard/growth_bytes_per_step"] > 0
    assert trainer.callback_metrics["vramguard/allocated_bytes"] > 0
    document = json.loads(path.read_text())
    assert document["verdict"] == "leak"
    assert document["unit"] == "step"
    suspect = document["suspects"][0]
    assert suspect["allocated_at"]["function"] == "training_step"
    assert suspect["allocated_at"]["file"] == __file__
    assert "loss_history" in suspect["held_by"]
    assert ".detach()" in suspect["fix"] or ".item()" in suspect["fix"]
    assert str(callback.report).startswith("LEAK Regressor training on cpu after ")


def test_warn_and_raise_carry_the_report() -> None:
    with pytest.warns(LeakWarning, match=r"memory leak on cpu in Regressor training"):
        fit(Regressor(leak=True), VramGuardCallback(check_every=10, **GUARD), steps=60)
    with pytest.raises(LeakDetected, match="memory leak on cpu") as raised:
        fit(Regressor(leak=True), VramGuardCallback(on_leak="raise", check_every=10,
                                                    diagnose="never", **GUARD), steps=60)
    assert raised.value.report.is_leak  # type: ignore[attr-defined]


def test_the_fixed_module_is_no_leak_and_the_report_is_written(tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    callback = VramGuardCallback(on_leak="raise", report=path, check_every=10, **GUARD)
    trainer = fit(Regressor(leak=False), callback, steps=60)
    assert trainer.global_step == 60
    assert trainer.callback_metrics["vramguard/leak"] == 0.0
    assert path.read_text().startswith("NO_LEAK Regressor training on cpu after 60 steps")


def test_bad_options_name_the_value() -> None:
    with pytest.raises(ValueError, match="on_leak must be 'warn', 'raise' or 'stop', got 'halt'"):
        VramGuardCallback(on_leak="halt")
