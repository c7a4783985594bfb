"""A torchmetrics curve metric updated on every request and never reset: its list states keep
every batch. Reported: Lightning-AI/torchmetrics#2921 (BinaryPrecisionRecallCurve preds/target
grow) and #1949 (AUROC-type metrics hold their states until reset())."""
import torch
from torchmetrics.classification import BinaryAUROC

torch.manual_seed(0)
auroc = BinaryAUROC()


def handle(request):
    auroc.update(torch.rand(64), torch.randint(0, 2, (64,)))  # LEAK
