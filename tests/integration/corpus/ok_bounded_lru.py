"""Look-alike (no leak): a bounded functools cache (the default maxsize=128 that
pymc-devs/pytensor#1660 contrasts with an unbounded cache) over a small key space: it fills
during warm-up, then stays flat."""
import functools

import torch

torch.manual_seed(0)


@functools.lru_cache(maxsize=16)
def embed(token):
    return torch.randn(64)


def handle(request):
    return embed(request % 8).sum().item()
