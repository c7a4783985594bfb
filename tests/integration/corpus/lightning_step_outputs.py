"""A LightningModule that keeps every training_step loss for the epoch end and never clears the
list. Reported: Lightning-AI/pytorch-lightning#16520 (the migration guide: append to
`self.training_step_outputs`, then `.clear()` it) and #15514 (OOM with training_epoch_end)."""
import lightning as L
import torch
from torch import nn


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(16, 1)
        self.training_step_outputs = []

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()  # LEAK
        self.training_step_outputs.append(loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


torch.manual_seed(0)
module = Regressor()
optimizer = module.configure_optimizers()


def handle(request):
    optimizer.zero_grad()
    loss = module.training_step(torch.randn(8, 16), request)
    loss.backward()
    optimizer.step()
