"""Look-alike (no leak): second-order terms through torch.autograd.grad(create_graph=True), the
alternative that pytorch/pytorch#4661's warning recommends; nothing is stored in .grad."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 8)


def handle(request):
    loss = model(torch.randn(4, 8)).tanh().pow(2).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads)
    return penalty.item()
