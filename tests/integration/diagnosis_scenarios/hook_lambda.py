"""A forward hook (a lambda) appending every output of a layer to a global list."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
activations = []
model[1].register_forward_hook(lambda module, args, output: activations.append(output))


def handle(request):
    with torch.no_grad():
        return model(torch.randn(4, 32)).argmax().item()  # LEAK
