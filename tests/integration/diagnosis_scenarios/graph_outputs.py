"""Outputs kept with their autograd graph (no no_grad, no detach)."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
results = []


def handle(request):
    batch = torch.randn(4, 32)
    out = model(batch)  # LEAK
    results.append(out)
