"""A leak on every 5th request only."""
import torch

kept = []


def handle(request):
    out = torch.randn(16, 128)  # LEAK
    if request % 5 == 0:
        kept.append(out)
    return out.mean().item()
