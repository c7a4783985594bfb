"""No-grad outputs kept in a dict that a closure owns."""
import torch
from torch import nn


def make_handler():
    model = nn.Linear(32, 64)
    cache = {}

    def handle(request):
        with torch.no_grad():
            out = model(torch.randn(4, 32))  # LEAK
        cache[f"user-{request}"] = out
        return out.sum().item()

    return handle


handle = make_handler()
