"""A plain forward-hook function that stores each activation on the module it is called with
(per-sample-gradient style), left registered during evaluation under no_grad.
Reported: meta-pytorch/opacus#176 ("torch.no_grad() creates memory leak because of forward
hook": the hooks keep saving activations)."""
import torch
from torch import nn


def capture_activations(module, inputs, output):
    module.activations.append(output)


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
model[0].activations = []
model[0].register_forward_hook(capture_activations)


def handle(request):
    with torch.no_grad():
        return model(torch.randn(8, 16)).argmax().item()  # LEAK
