"""An unbounded functools cache around a function that returns tensors, called with a new key
per request. Reported: meta-pytorch/botorch#1650 and pytorch/pytorch#147233 (lru_cache keeps
its arguments and results alive forever)."""
import functools

import torch

torch.manual_seed(0)
table = torch.randn(32, 64)


@functools.lru_cache(maxsize=None)  # noqa: UP033 - the reported form
def embed(token):
    return table[token % 32] * torch.randn(64)  # LEAK


def handle(request):
    return embed(request).sum().item()
