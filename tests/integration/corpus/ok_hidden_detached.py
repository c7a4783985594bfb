"""Look-alike (no leak): the recurrent state is carried but detached each call, as the
`repackage_hidden` answer in yunjey/pytorch-tutorial#90 explains."""
import torch
from torch import nn

torch.manual_seed(0)
cell = nn.GRUCell(16, 32)
hidden = torch.zeros(4, 32)


def handle(request):
    global hidden
    hidden = cell(torch.randn(4, 16), hidden).detach()
    return hidden.sum().item()
