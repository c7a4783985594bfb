"""Closures that capture a tensor, kept in a list of callbacks."""
import torch

callbacks = []


def handle(request):
    out = torch.randn(4, 128)  # LEAK
    callbacks.append(lambda: out.sum())  # noqa: PLW0108 - the leak under test
    return out.mean().item()
