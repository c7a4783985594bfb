"""A forward hook that is a callable object storing outputs in an attribute."""
import torch
from torch import nn


class Recorder:
    def __init__(self):
        self.outputs = []

    def __call__(self, module, args, output):
        self.outputs.append(output)


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
recorder = Recorder()
model[0].register_forward_hook(recorder)


def handle(request):
    with torch.inference_mode():
        return model(torch.randn(4, 32)).argmax().item()  # LEAK
