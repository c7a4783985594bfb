"""A recurrent state carried from one call to the next without detach(): every call's graph is
chained to the new state. Reported: yunjey/pytorch-tutorial#90 (why `states = detach(states)`)
and the word-language-model `repackage_hidden` questions (LiyuanLucasLiu/LD-Net#6)."""
import torch
from torch import nn

torch.manual_seed(0)
cell = nn.GRUCell(16, 32)
hidden = torch.zeros(4, 32)


def handle(request):
    global hidden
    hidden = cell(torch.randn(4, 16), hidden)  # LEAK
    return hidden.sum().item()
