"""Look-alike (no leak): the usage advised in Lightning-AI/torchmetrics#1949 and
NRCan/geo-deep-learning#582: compute, then reset() the metric at the end of each "epoch"."""
import torch
from torchmetrics.classification import BinaryAUROC

torch.manual_seed(0)
auroc = BinaryAUROC()


def handle(request):
    auroc.update(torch.rand(64), torch.randint(0, 2, (64,)))
    if request % 5 == 4:
        auroc.compute()
        auroc.reset()
