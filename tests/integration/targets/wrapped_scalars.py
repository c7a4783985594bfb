"""Leaks whose autograd graphs hold the 0-dim tensors autograd makes from Python numbers.

``loss * 0.5`` and ``loss / 4`` save the number in the op's graph node as an 8-byte "wrapped"
tensor (float64 for a float, int64 for an int) that no dispatched op allocated: every request of
these handlers leaves such scalars behind, beside the real leak. Each line that allocates what
the leak's root keeps is marked ``# LEAK``.
"""

from __future__ import annotations

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
losses: list[torch.Tensor] = []
total = torch.zeros(())


def scaled_losses(request: int) -> None:
    """A list keeps each scaled loss with its graph (the scale 0.5 is saved by MulBackward0)."""
    loss = model(torch.randn(8, 32)).pow(2).mean()
    losses.append(loss * 0.5)  # LEAK


def accumulated(request: int) -> None:
    """Gradient-accumulation style sum of losses that is never detached: ``total`` itself does
    not grow, its graph does (the 2 and the 4 are saved as int64 scalars)."""
    global total
    batch = torch.randn(4, 32)
    loss = model(batch).relu().mean() * 2  # LEAK
    total = total + loss / 4
