"""A leak that starts late (after request 40)."""
import torch

late = []


def handle(request):
    out = torch.randn(4, 256)  # LEAK
    if request >= 40:
        late.append(out)
    return out.mean().item()
