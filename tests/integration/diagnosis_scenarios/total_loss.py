"""`total = total + loss` across validation requests: one visible tensor, a growing graph."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
total = torch.zeros(())


def handle(request):
    global total
    batch = torch.randn(4, 32)
    loss = model(batch).pow(2).mean()  # LEAK
    total = total + loss
