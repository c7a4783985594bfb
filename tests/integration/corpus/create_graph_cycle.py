"""backward(create_graph=True) in a loop: each parameter's .grad keeps a graph that refers back to
the parameter (a cycle in C++), and accumulating into .grad chains every step's graph.
Reported: pytorch/pytorch#7343 (cycle `x -> x.grad -> x.grad.grad_fn -> x`) and
pytorch/pytorch#4661 (the warning that now recommends autograd.grad or resetting .grad)."""
import warnings

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 8)


def handle(request):
    x = torch.randn(4, 8)
    loss = model(x).tanh().pow(2).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about exactly this cycle
        loss.backward(create_graph=True)  # LEAK
