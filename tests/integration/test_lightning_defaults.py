"""A clean Lightning run with ``VramGuardCallback()`` at default settings is never called a leak.

Before the guard kept its own analysis off the C heap, a clean 600-step MLP run read `leak` at
its checks of steps 300-450 (numpy's small-buffer cache growing with each verdict's arrays; 4 of
20 checks in a 1,000-step run, by hand), and the callback opened its diagnosis window for
nothing. A fresh process, as a training job is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

JOB = """
import json, warnings
warnings.filterwarnings("ignore")
import torch, lightning as L
from torch.utils.data import DataLoader, TensorDataset
from vramguard.lightning import VramGuardCallback

class MLP(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                       torch.nn.Linear(512, 1))

    def training_step(self, batch, i):
        features, target = batch
        return torch.nn.functional.mse_loss(self.net(features), target)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

class Verdicts(L.Callback):  # what the callback itself decided at each of its checks
    def __init__(self, callback):
        self.callback, self.seen = callback, []

    def on_train_batch_end(self, trainer, module, *args):
        # After the callback's own hook: a check there set train.verdict.
        train = self.callback.train
        if train.checks > len(self.seen):
            self.seen.append((trainer.global_step, train.verdict.kind.value))

steps = 600
torch.manual_seed(0)
data = DataLoader(TensorDataset(torch.randn(32 * steps, 256), torch.randn(32 * steps, 1)),
                  batch_size=32)
callback = VramGuardCallback()
watch = Verdicts(callback)
trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[callback, watch])
trainer.fit(MLP(), data)
print(json.dumps({"checks": watch.seen, "samples": len(callback.train.guard.samples)}))
"""


def test_a_clean_run_at_defaults_is_never_called_a_leak() -> None:
    done = subprocess.run([sys.executable, "-c", JOB], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = [kind for _, kind in result["checks"]]
    # Every 50 steps at the least; further apart where a check costs more than 0.5% of the
    # steps between two (at this ~1 ms step: 100-400 steps apart).
    assert len(kinds) >= 2, result
    assert "leak" not in kinds, result
    # Most runs end "no_leak" (200-270 samples); some end "inconclusive" (~50 samples: the
    # grouped census in a process with Lightning loaded costs ~0.5 s, which the 1% budget
    # repays out of many steps of reads). Either is honest; "leak" would not be.
    assert kinds[-1] in ("no_leak", "inconclusive"), result
